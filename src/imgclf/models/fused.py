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

``IMGCLF_FUSED_KERNELS=0`` in the environment turns the fusion off (to compare speeds).
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch
from numba import njit, prange

# The integer type whose bit patterns each float dtype is compared as.
BITS = {torch.bfloat16: torch.int16, torch.float32: torch.int32}
NO_GRADIENT = 4
ENABLED = os.environ.get("IMGCLF_FUSED_KERNELS", "1") != "0"


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


def _nhwc_bits(t: torch.Tensor) -> np.ndarray:
    """A channels_last tensor as an (N, H, W, C) array of its bit patterns (no copy)."""
    return t.permute(0, 2, 3, 1).view(BITS[t.dtype]).numpy()


class _PoolReLUDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, noise, threshold, scale):
        n, c, h, w = x.shape
        out = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype,
                          memory_format=torch.channels_last)
        idx = torch.empty((n, h // 2, w // 2, c), dtype=torch.uint8)
        keep = (noise.view(n, h // 2, w // 2, c).numpy() if threshold
                else np.zeros((1, 1, 1, 1), np.uint8))
        _forward(_nhwc_bits(x), keep, threshold, _nhwc_bits(out), idx.numpy())
        if scale != 1:
            out.mul_(scale)  # in PyTorch, for its rounding
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
        _backward(_nhwc_bits(grad), idx.numpy(), _nhwc_bits(grad_in))
        return grad_in, None, None, None


def supports(x: torch.Tensor) -> bool:
    """Whether ``pool_relu_dropout`` runs for x: CPU, bf16 or fp32, channels_last, eager."""
    return (ENABLED and x.device.type == "cpu" and x.dtype in BITS and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and not (torch.jit.is_tracing() or torch.jit.is_scripting()
                     or torch.compiler.is_compiling()))


def pool_relu_dropout(x: torch.Tensor, noise: torch.Tensor | None = None,
                      threshold: int = 0, scale: float = 1.0) -> torch.Tensor:
    """``dropout(relu(max_pool2d(x, 2)))`` for x that ``supports`` accepts.

    Dropout keeps an output value when its byte of ``noise`` (uint8, one per output value,
    in the output's channels_last order) is at least ``threshold``, and multiplies it by
    ``scale``; ``threshold`` 0 means no dropout.
    """
    # As many threads as PyTorch's own ops use (fewer under torchrun, for instance).
    threads = torch.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if torch.get_num_threads() != threads:
        # Starting its OpenMP pool, numba sets the calling thread's OpenMP thread count to
        # every core, in the OpenMP runtime PyTorch shares: put PyTorch's back.
        torch.set_num_threads(threads)
    return _PoolReLUDropout.apply(x, noise, threshold, scale)
