"""Max-pool 2x2, ReLU and dropout as one CPU kernel, for the small CNNs' blocks.

On a CPU, ``MaxPool2d(2) -> ReLU -> Dropout`` costs more than the convolution before it:
PyTorch's pooling stores an int64 index per output value and its backward zero-fills the
whole input gradient before scattering into it; ReLU and dropout each read and write the
pooled maps again, forward and backward. Here one pass over the channels_last maps does
all three, keeps which of the four window positions won in one byte (4 for "no
gradient": ReLU's zero or a dropped value), and one pass writes the input gradient.

The result is bit for bit that of the three modules, forward and backward, given the same
dropout noise: the same first maximum in each window, the dropout scale applied as
``Dropout`` applies it. Values are compared as integers: for the maxima of a ReLU only positive
values matter, and positive floats order as their bit patterns do.

In float32 training the network's first convolution can join its block
(``conv_pool_relu_dropout``): its input needs no gradient, so its weight and bias gradients
are summed from the pooled gradient and the input alone; those sums are the same up to
their order, not bit for bit.

``IMGCLF_FUSED_KERNELS=0`` in the environment turns the fusion off (to compare speeds).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

from imgclf.machine import interrupts_deferred, switched_on

# The integer type whose bit patterns each float dtype is compared as.
BITS = {torch.bfloat16: torch.int16, torch.float32: torch.int32}
NO_GRADIENT = 4
ENABLED = switched_on("IMGCLF_FUSED_KERNELS")


@njit(parallel=True, cache=True, boundscheck=False)
def _forward(x, noise, threshold, out, idx):  # pragma: no cover (compiled)
    """out, idx (N, H//2, W//2, C) from x (N, H, W, C); noise like out, or (1, 1, 1, 1)."""
    n_, h_out, w_out, c_ = out.shape
    drop = threshold > 0
    for row in prange(n_ * h_out):
        n, i = row // h_out, row % h_out
        top, bottom = x[n, 2 * i], x[n, 2 * i + 1]
        for j in range(w_out):
            a, b = top[2 * j], top[2 * j + 1]
            c, d = bottom[2 * j], bottom[2 * j + 1]
            o, k = out[n, i, j], idx[n, i, j]
            keep = noise[n, i, j] if drop else noise[0, 0, 0]
            for ch in range(c_):
                m, won = a[ch], 0
                if b[ch] > m:
                    m, won = b[ch], 1
                if c[ch] > m:
                    m, won = c[ch], 2
                if d[ch] > m:
                    m, won = d[ch], 3
                if m <= 0 or (drop and keep[ch] < threshold):
                    o[ch], k[ch] = 0, NO_GRADIENT
                else:
                    o[ch], k[ch] = m, won


@njit(parallel=True, cache=True, boundscheck=False)
def _backward(grad, idx, grad_in):  # pragma: no cover (compiled)
    """grad_in (N, H, W, C) from the output gradient and the winners' positions."""
    n_, h_out, w_out, c_ = grad.shape
    h, w = grad_in.shape[1], grad_in.shape[2]
    for row in prange(n_ * h_out):
        n, i = row // h_out, row % h_out
        g, k = grad[n, i], idx[n, i]
        for r in range(2):
            dst = grad_in[n, 2 * i + r]
            for j in range(w_out):
                for s in range(2):
                    want = 2 * r + s
                    to, gj, kj = dst[2 * j + s], g[j], k[j]
                    for ch in range(c_):
                        to[ch] = gj[ch] if kj[ch] == want else 0
            for col in range(2 * w_out, w):  # an odd width's last column gets no gradient
                dst[col, :] = 0
    for n in prange(n_):
        for r in range(2 * h_out, h):  # nor does an odd height's last row
            grad_in[n, r] = 0


@njit(parallel=True, cache=True, boundscheck=False, fastmath=True)
def _conv_weight_grad(x, grad, idx, scale, acc, acc_bias):  # pragma: no cover (compiled)
    """Sums a 3x3 convolution's weight and bias gradients from its pooled output's gradient.

    x (N, H, W*C) is the convolution's input; grad and idx (N, H'//2, W'//2, O) are the
    pooled output's gradient (before dropout's ``scale``) and the winners' positions from
    ``_forward``. Only a window's winner has a gradient, so each output value with one adds
    its gradient times the 3x3xC input patch under its winner to its channel's weights:
    acc (T, O, 9*C) and acc_bias (T, O) take T partial sums, one per thread, in float64.

    For each window, the channels with a gradient are listed without a branch and the four
    candidate patches copied out, padded to whole vectors, so that the inner loop runs on
    vectors; a row's sums are kept in float32, then added to acc.
    """
    chunks, o_, c9 = acc.shape
    n_, h_out, w_out, _ = grad.shape
    c3, width = c9 // 3, (c9 + 7) // 8 * 8
    c_ = c3 // 3
    rows = n_ * h_out
    for t in prange(chunks):
        a = np.zeros((o_, width), np.float32)
        bias = np.zeros(o_, np.float32)
        patch = np.zeros((4, width), np.float32)
        active = np.empty(o_, np.int64)
        for row in range(t, rows, chunks):
            n, i = row // h_out, row % h_out
            a[:] = 0
            bias[:] = 0
            for j in range(w_out):
                g, k = grad[n, i, j], idx[n, i, j]
                count = 0
                for o in range(o_):
                    active[count] = o
                    count += k[o] != NO_GRADIENT
                if count == 0:
                    continue
                for s in range(4):
                    top, left = 2 * i + (s >> 1), (2 * j + (s & 1)) * c_
                    for r in range(3):
                        src = x[n, top + r]
                        for q in range(c3):
                            patch[s, r * c3 + q] = src[left + q]
                for m in range(count):
                    o = active[m]
                    gv, p, ao = g[o], patch[k[o]], a[o]
                    bias[o] += gv
                    for q in range(width):
                        ao[q] += gv * p[q]
            for o in range(o_):
                acc_bias[t, o] += scale * bias[o]
                for q in range(c9):
                    acc[t, o, q] += scale * a[o, q]


def _nhwc_bits(t: torch.Tensor) -> np.ndarray:
    """A channels_last tensor as an (N, H, W, C) array of its bit patterns (no copy)."""
    return t.permute(0, 2, 3, 1).view(BITS[t.dtype]).numpy()


def _pool(x: torch.Tensor, noise: torch.Tensor | None, threshold: int,
          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled, rectified, dropped-out maps and the winners' positions (uint8, NHWC)."""
    n, c, h, w = x.shape
    out = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, memory_format=torch.channels_last)
    idx = torch.empty((n, h // 2, w // 2, c), dtype=torch.uint8)
    keep = (noise.view(n, h // 2, w // 2, c).numpy() if threshold
            else np.zeros((1, 1, 1, 1), np.uint8))
    with interrupts_deferred():  # numba may compile it now
        _forward(_nhwc_bits(x), keep, threshold, _nhwc_bits(out), idx.numpy())
    if scale != 1:
        out.mul_(scale)  # in PyTorch, for its rounding
    return out, idx


class _PoolReLUDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, noise, threshold, scale):
        out, idx = _pool(x, noise, threshold, scale)
        ctx.save_for_backward(idx)
        ctx.scale, ctx.shape = scale, x.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        if ctx.scale != 1:
            grad = grad * ctx.scale
        grad_in = torch.empty(ctx.shape, dtype=grad.dtype, memory_format=torch.channels_last)
        with interrupts_deferred():  # numba may compile it now
            _backward(_nhwc_bits(grad), idx.numpy(), _nhwc_bits(grad_in))
        return grad_in, None, None, None


class _ConvPoolReLUDropout(torch.autograd.Function):
    """A first convolution (its input needs no gradient) and the block's pool, ReLU, dropout.

    Forward, the convolution is PyTorch's and the rest is ``_pool``; the convolution's
    output is not kept. Backward needs only the weight and bias gradients, and a window's
    gradient reaches only its winner, so ``_conv_weight_grad`` sums them straight from the
    pooled gradient and the input: the full-size gradient of the convolution's output is
    never written, and the dense weight-gradient convolution, the costliest part of a
    float32 step on an AVX2 CPU, never runs.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, noise, threshold, scale):
        y = torch.nn.functional.conv2d(x, weight, bias)
        out, idx = _pool(y.contiguous(memory_format=torch.channels_last), noise, threshold, scale)
        ctx.save_for_backward(x, weight, idx)
        ctx.scale, ctx.has_bias = scale, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, idx = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        o = weight.shape[0]
        threads = numba.get_num_threads()
        acc = np.zeros((threads, o, 9 * c))
        acc_bias = np.zeros((threads, o))
        rows = x.permute(0, 2, 3, 1).reshape(n, h, w * c).numpy()
        with interrupts_deferred():  # numba may compile it now
            _conv_weight_grad(rows, grad.permute(0, 2, 3, 1).numpy(), idx.numpy(), ctx.scale,
                              acc, acc_bias)
        grad_weight = (torch.from_numpy(acc.sum(0)).view(o, 3, 3, c).permute(0, 3, 1, 2)
                       .to(weight.dtype).contiguous(memory_format=torch.channels_last))
        grad_bias = torch.from_numpy(acc_bias.sum(0)).to(weight.dtype) if ctx.has_bias else None
        return None, grad_weight, grad_bias, None, None, None


def supports(x: torch.Tensor) -> bool:
    """Whether ``pool_relu_dropout`` runs for x: CPU, bf16 or fp32, channels_last, eager."""
    return (ENABLED and x.device.type == "cpu" and x.dtype in BITS and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and not (torch.jit.is_tracing() or torch.jit.is_scripting()
                     or torch.compiler.is_compiling()))


def supports_conv(x: torch.Tensor, conv: torch.nn.Module) -> bool:
    """Whether ``conv_pool_relu_dropout`` runs for ``conv`` on x, in training.

    As ``supports``, in float32 without autocast, for a plain 3x3 'valid' convolution
    whose weights train and whose input needs no gradient: the network's first layer.
    """
    return (isinstance(conv, torch.nn.Conv2d) and supports(x) and x.dtype == torch.float32
            and torch.is_grad_enabled() and conv.weight.requires_grad and not x.requires_grad
            and conv.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros")


def pool_relu_dropout(x: torch.Tensor, noise: torch.Tensor | None = None,
                      threshold: int = 0, scale: float = 1.0) -> torch.Tensor:
    """``dropout(relu(max_pool2d(x, 2)))`` for x that ``supports`` accepts.

    Dropout keeps an output value when its byte of ``noise`` (uint8, one per output value,
    in the output's channels_last order) is at least ``threshold``, and multiplies it by
    ``scale``; ``threshold`` 0 means no dropout.
    """
    _match_threads()
    return _PoolReLUDropout.apply(x, noise, threshold, scale)


def conv_pool_relu_dropout(x: torch.Tensor, conv: torch.nn.Conv2d,
                           noise: torch.Tensor | None = None, threshold: int = 0,
                           scale: float = 1.0) -> torch.Tensor:
    """``pool_relu_dropout(conv(x), ...)`` for a ``conv`` and x that ``supports_conv`` accepts.

    The same output; the weight and bias gradients are the same sums, in another order.
    """
    _match_threads()
    return _ConvPoolReLUDropout.apply(x, conv.weight, conv.bias, noise, threshold, scale)


def _match_threads() -> None:
    """Has numba's kernels use as many threads as PyTorch's own ops (fewer under torchrun)."""
    threads = torch.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if torch.get_num_threads() != threads:
        # Starting its OpenMP pool, numba sets the calling thread's OpenMP thread count to
        # every core, in the OpenMP runtime PyTorch shares: put PyTorch's back.
        torch.set_num_threads(threads)
