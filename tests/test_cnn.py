"""The reference CNNs: their dropout matches nn.Dropout's statistics and modes; their fused
blocks train exactly as the plain modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgclf.models import fused
from imgclf.models.cnn import Dropout
from imgclf.models.factory import create_model


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_dropout_zeroes_a_fraction_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(200_000)
    out = Dropout(p).train()(x)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.01)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)
    # p is rounded to a multiple of 1/256 and the scale follows it: 1/(1-p) to 0.2%
    assert out.unique().tolist() == pytest.approx([0.0, 1 / (1 - p)], rel=2e-3)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_dropout_masks_each_value_independently_whatever_the_memory_layout(layout):
    torch.manual_seed(0)
    x = torch.ones(16, 8, 30, 30)
    x = (x.contiguous(memory_format=torch.channels_last) if layout == "channels_last"
         else x.transpose(2, 3))
    x.requires_grad_(True)
    out = Dropout(0.5).train()(x)
    out.sum().backward()
    assert out.shape == x.shape
    dropped = out == 0
    # no pattern across channels or positions: every channel and row drops about half
    assert dropped.float().mean((0, 2, 3)).tolist() == pytest.approx([0.5] * 8, abs=0.03)
    assert dropped.float().mean((0, 1, 3)).tolist() == pytest.approx([0.5] * 30, abs=0.05)
    assert torch.equal(x.grad == 0, dropped)


def test_dropout_is_identity_in_eval_and_passes_gradients_through_kept_values():
    x = torch.randn(4, 8, requires_grad=True)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    out = Dropout(0.5).train()(x)
    out.sum().backward()
    kept = out != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 2.0))
    assert torch.all(x.grad[~kept] == 0)


def test_dropout_rejects_probability_one():
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\), got 1"):
        Dropout(1.0)


def test_compiled_dropout_is_the_standard_one():
    """Compiled, Dropout(0.3) scales kept values by 1 / 0.7 (nn.functional.dropout), not by
    256 / 179 as its eager mask does."""
    x = torch.ones(4096)
    eager = Dropout(0.3).train()(x)
    compiled = torch.compile(Dropout(0.3).train(), backend="eager")(x)
    assert torch.allclose(eager[eager > 0], torch.tensor(256 / 179))
    assert torch.allclose(compiled[compiled > 0], torch.tensor(1 / 0.7))


@pytest.mark.parametrize("name", ["small_cnn", "small_cnn_wide"])
@pytest.mark.parametrize("amp", [torch.bfloat16, None])
def test_fused_blocks_train_exactly_as_the_plain_modules(name, amp, monkeypatch):
    """Fused or not, the same seed gives the same losses and weights to the last bit."""
    supports = fused.supports
    # The first convolution's fusion sums in another order: the next test covers it.
    monkeypatch.setattr(fused, "supports_conv", lambda x, conv: False)

    def train(fuse: bool):
        monkeypatch.setattr(fused, "supports", supports if fuse else lambda x: False)
        torch.manual_seed(0)
        model, _, _ = create_model(name, 3, img_size=38, pretrained=False)
        model = model.to(memory_format=torch.channels_last).train()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        x = (torch.rand(6, 3, 38, 38) * 255).contiguous(memory_format=torch.channels_last)
        y = torch.tensor([0, 1, 2, 0, 1, 2])
        losses = []
        for _ in range(3):
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.inference_mode():
            evaluated = model.eval()(x)
        return losses, model.state_dict(), evaluated

    calls = []
    real = fused.pool_relu_dropout
    monkeypatch.setattr(fused, "pool_relu_dropout", lambda *a: calls.append(1) or real(*a))
    plain_losses, plain_weights, plain_eval = train(fuse=False)
    assert not calls
    fused_losses, fused_weights, fused_eval = train(fuse=True)
    assert len(calls) == 3 * 4  # three blocks, three training steps and one evaluation
    assert fused_losses == plain_losses
    assert plain_weights.keys() == fused_weights.keys()
    assert all(torch.equal(plain_weights[k], fused_weights[k]) for k in plain_weights)
    assert torch.equal(fused_eval, plain_eval)


@pytest.mark.parametrize("name", ["small_cnn", "small_cnn_wide"])
def test_fused_first_conv_trains_as_the_plain_modules(name, monkeypatch):
    """In float32 the first convolution joins its block: the same training, up to rounding."""
    supports_conv = fused.supports_conv
    calls = []

    def train(fuse: bool):
        monkeypatch.setattr(fused, "supports_conv", lambda x, conv: fuse and (
            supports_conv(x, conv) and not calls.append(1)))
        torch.manual_seed(0)
        model, _, _ = create_model(name, 3, img_size=38, pretrained=False)
        model = model.to(memory_format=torch.channels_last).train()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        x = torch.rand(6, 3, 38, 38).contiguous(memory_format=torch.channels_last)
        y = torch.tensor([0, 1, 2, 0, 1, 2])
        losses = []
        for _ in range(3):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, model.state_dict()

    plain_losses, plain_weights = train(fuse=False)
    assert not calls
    fused_losses, fused_weights = train(fuse=True)
    assert len(calls) == 3  # the first convolution, once a step
    assert fused_losses[0] == plain_losses[0]  # the forward pass is the same
    assert fused_losses == pytest.approx(plain_losses, rel=1e-5)
    for k in plain_weights:
        torch.testing.assert_close(fused_weights[k], plain_weights[k], rtol=1e-4, atol=1e-5)
