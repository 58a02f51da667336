"""The reference CNNs: their dropout matches nn.Dropout's statistics and modes."""

from __future__ import annotations

import pytest
import torch

from imgclf.models.cnn import Dropout


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_dropout_zeroes_a_fraction_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(200_000)
    out = Dropout(p).train()(x)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.01)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)
    assert out.unique().tolist() == pytest.approx([0.0, 1 / (1 - p)])


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
