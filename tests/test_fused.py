"""The fused pool-ReLU-dropout kernel: bit for bit the plain modules, forward and backward."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from imgclf.models import fused
from imgclf.models.cnn import Dropout


def _plain(x, noise, p):
    """The plain modules, with ``noise`` as the dropout's random bytes."""
    drop = Dropout(p).train()
    drop.noise = lambda count, device: noise[:count]
    return drop(nn.ReLU()(nn.MaxPool2d(2)(x)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(3, 8, 20, 20), (2, 5, 9, 7)])  # even; odd height and width
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_fused_equals_pool_relu_dropout_bit_for_bit(dtype, shape, p):
    torch.manual_seed(0)
    n, c, h, w = shape
    x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 0, :4, :4] = 0.5  # tied maxima: the first in each window takes the gradient
    x[0, 1, :4, :4] = -1.0  # windows with no positive value: no gradient at all
    noise = torch.randint(0, 256, (n * c * (h // 2) * (w // 2),), dtype=torch.uint8)
    drop = Dropout(p)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    expected = _plain(a, noise, p)
    got = (fused.pool_relu_dropout(b, noise, drop.threshold, drop.scale) if p
           else fused.pool_relu_dropout(b))
    grad = torch.randn(expected.shape).to(dtype)
    expected.backward(grad)
    got.backward(grad)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, expected)
    assert torch.equal(b.grad, a.grad)
    assert (got == 0).any() and (got > 0).any()
    # each kept output of a tied window sends its gradient to one input value
    assert (b.grad[0, 0, :4, :4] != 0).sum() == (got[0, 0, :2, :2] != 0).sum() > 0
    assert torch.all(b.grad[0, 1, :4, :4] == 0)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_fused_runs_only_where_it_can():
    x = torch.randn(2, 4, 8, 8)
    assert not fused.supports(x)  # NCHW
    x = x.contiguous(memory_format=torch.channels_last)
    assert fused.supports(x)
    assert not fused.supports(x.double())
    assert not fused.supports(x[:, :, :, :1].squeeze(-1))  # not 4-d
    traced = []
    torch.jit.trace(lambda t: traced.append(fused.supports(t)) or t * 1, (x,), check_trace=False)
    assert traced == [False]  # traced for export: the plain modules


def test_kernel_leaves_pytorchs_thread_count_alone():
    # numba's OpenMP pool, when it starts, sets the calling thread's OpenMP thread count to
    # every core in the runtime PyTorch shares; a fresh process shows it.
    probe = ("import torch\n"
             "from imgclf.models import fused\n"
             "torch.set_num_threads(1)\n"
             "x = torch.rand(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)\n"
             "fused.pool_relu_dropout(x)\n"
             "print(torch.get_num_threads())\n")
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1"]


@pytest.mark.parametrize("shape", [(3, 3, 22, 22), (2, 4, 13, 11)])  # even; odd conv output
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_fused_first_conv_equals_conv_then_pool_relu_dropout(shape, p):
    torch.manual_seed(0)
    n, c, h, w = shape
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(c, 8, 3).to(memory_format=torch.channels_last)
    noise = torch.randint(0, 256, (n * 8 * ((h - 2) // 2) * ((w - 2) // 2),), dtype=torch.uint8)
    drop = Dropout(p)
    assert fused.supports_conv(x, conv)
    expected = _plain(conv(x), noise, p)
    grad = torch.randn(expected.shape)
    expected.backward(grad)
    want = conv.weight.grad.clone(), conv.bias.grad.clone()
    conv.zero_grad()
    got = (fused.conv_pool_relu_dropout(x, conv, noise, drop.threshold, drop.scale) if p
           else fused.conv_pool_relu_dropout(x, conv))
    got.backward(grad)
    assert torch.equal(got, expected)
    assert (want[0] != 0).all()
    torch.testing.assert_close(conv.weight.grad, want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.bias.grad, want[1], rtol=1e-5, atol=1e-5)


def test_first_conv_is_fused_only_in_float32_training_of_a_plain_3x3_conv():
    x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    assert fused.supports_conv(x, conv)
    assert not fused.supports_conv(x, nn.ReLU())
    assert not fused.supports_conv(x.requires_grad_(True), conv)  # its input's gradient is needed
    x = x.detach()
    with torch.no_grad():
        assert not fused.supports_conv(x, conv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused.supports_conv(x, conv)
    assert not fused.supports_conv(x.bfloat16(), conv.bfloat16())
    for other in (nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(3, 4, 3, padding=1),
                  nn.Conv2d(3, 4, 5), nn.Conv2d(3, 4, 3, dilation=2)):
        assert not fused.supports_conv(x, other.to(memory_format=torch.channels_last))
    conv.weight.requires_grad_(False)
    assert not fused.supports_conv(x, conv)


@pytest.mark.parametrize("kernel", ["_forward", "_backward", "_conv_weight_grad"])
def test_ctrl_c_during_a_kernel_takes_effect_when_it_returns(monkeypatch, kernel):
    # numba compiles a kernel at its first call, running Python callbacks whose exceptions
    # it ignores: an interrupt raised inside one left the process hanging.
    import signal
    import time

    real, returned = getattr(fused, kernel), []

    def interrupted(*args):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler would run here, were it not deferred
        returned.append(real(*args))

    monkeypatch.setattr(fused, kernel, interrupted)
    x = torch.randn(2, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    with pytest.raises(KeyboardInterrupt):
        if kernel == "_backward":  # the pooling's own backward: its input needs a gradient
            fused.pool_relu_dropout(x.requires_grad_()).sum().backward()
        else:
            fused.conv_pool_relu_dropout(x, nn.Conv2d(3, 4, 3)).sum().backward()
    assert returned
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
