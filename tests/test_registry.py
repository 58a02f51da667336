"""Tests for imgclf.models.registry and imgclf.models.factory: names, shapes, preprocessing,
and which parameters train."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from imgclf.errors import ModelError
from imgclf.models import list_models, register_model
from imgclf.models import registry as registry_module
from imgclf.models.factory import (
    Classifier,
    backbone_groups,
    create_model,
    freeze_norm_stats,
    set_trainable,
)
from imgclf.models.registry import check_model_name, get_spec

BACKBONE = "mobilenetv2_100"




@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so a test may register names without leaking them."""
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_model(BACKBONE, 3, pretrained=False, img_size=64)


def pixels(batch: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size),
                         generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


# --- the registry -------------------------------------------------------------------------------


def test_registry_holds_the_small_cnns():
    names = list_models()
    assert {"small_cnn", "small_cnn_wide"} <= set(names)
    assert names == sorted(names)
    assert list_models("*wide") == ["small_cnn_wide"]
    assert list_models("nothing*") == []


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("num_classes", [2, 5])
def test_every_registered_model_builds_at_a_small_size(name, num_classes):
    model, prep, source = create_model(name, num_classes, img_size=32)
    assert isinstance(model, Classifier)
    assert source == "scratch"
    assert prep.img_size == 32
    model.eval()
    with torch.no_grad():
        out = model(pixels(3, 32))
    assert out.shape == (3, num_classes)
    assert torch.isfinite(out).all()
    assert get_spec(name).description


@pytest.mark.parametrize("name", list_models())
def test_registered_model_defaults_to_its_design_size(name):
    _, prep, _ = create_model(name, 2)
    assert prep.img_size == get_spec(name).default_size


def test_input_too_small_for_a_small_cnn_is_refused():
    with pytest.raises(ModelError, match=r"image size 16 is too small .* --img-size 22 or more"):
        create_model("small_cnn", 2, img_size=16)
    create_model("small_cnn", 2, img_size=22)


def test_input_too_small_for_a_backbone_is_refused_with_the_smallest_that_runs():
    with pytest.raises(ModelError, match=r"^image size 64 is too small for inception_v3: "
                                         r"choose --img-size 75 or more\.$"):
        create_model("inception_v3", 2, img_size=64, pretrained=False)
    model, _, _ = create_model("inception_v3", 2, img_size=75, pretrained=False)
    assert model.training  # the check ran the backbone in eval mode, then put it back


def test_duplicate_registration_raises(scratch_registry):
    with pytest.raises(ModelError, match=r"'small_cnn' is already registered"):
        register_model("small_cnn", "again", default_size=32)(lambda n, s: nn.Identity())
    # The original entry is untouched.
    assert get_spec("small_cnn").description.startswith("reference scratch CNN")


def test_new_registration_is_listed_and_buildable(scratch_registry):
    @register_model("tiny_test_net", "a test network", default_size=8)
    def tiny(num_classes: int, img_size: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * img_size * img_size, num_classes))

    assert "tiny_test_net" in list_models("tiny*")
    model, prep, _ = create_model("tiny_test_net", 4)
    assert model(pixels(2, 8)).shape == (2, 4)
    with pytest.raises(ModelError, match=r"already registered"):
        register_model("tiny_test_net", "twice", default_size=8)(tiny)


def test_unknown_name_raises_with_close_matches():
    with pytest.raises(ModelError, match=r"Unknown model 'small_cn'.*Did you mean: .*small_cnn"):
        create_model("small_cn", 2)


def test_unknown_timm_like_name_suggests_timm_models():
    with pytest.raises(ModelError, match=r"Did you mean: .*mobilenetv2_100"):
        create_model("mobilenetv2_10O", 2)
    # With a weights tag, the architecture is matched.
    with pytest.raises(ModelError, match=r"Unknown model 'resnett18\.a1_in1k'.*Did you mean: "
                                         r".*resnet18"):
        create_model("resnett18.a1_in1k", 2)
    with pytest.raises(ModelError, match=r"timm has no weights tagged 'a1_in1kk' for resnet18; "
                                         r"its tags: a1_in1k, a2_in1k"):
        check_model_name("resnet18.a1_in1kk")
    check_model_name("resnet18.a1_in1k")


def test_nonsense_name_has_no_suggestion_but_says_how_to_list():
    with pytest.raises(ModelError, match=r"imgclf models PATTERN") as info:
        create_model("zzzzqqqq", 2)
    assert "Did you mean" not in str(info.value)


def test_single_class_is_refused():
    with pytest.raises(ModelError, match=r"num_classes must be at least 2, got 1"):
        create_model("small_cnn", 1)


def test_list_models_can_include_timm():
    names = list_models("mobilenetv2*", include_timm=True)
    assert BACKBONE in names
    assert BACKBONE not in list_models("mobilenetv2*")


# --- timm backbones -----------------------------------------------------------------------------


def test_timm_backbone_output_shape_and_preprocessing(backbone):
    model, prep, source = backbone
    assert source == "random init"
    model.eval()
    with torch.no_grad():
        out = model(pixels(2, 64))
    assert out.shape == (2, 3)
    reference = timm.data.resolve_model_data_config(timm.create_model(BACKBONE))
    assert prep.img_size == 64  # asked for, not the backbone's 224
    assert prep.mean == pytest.approx(reference["mean"])
    assert prep.std == pytest.approx(reference["std"])
    assert prep.interpolation == reference["interpolation"]
    # The model normalises 0-255 inputs with exactly that mean and std.
    x = pixels(1, 64)
    expected = (x.float() / 255 - torch.tensor(reference["mean"]).view(1, 3, 1, 1)) / \
        torch.tensor(reference["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalise(x), expected, rtol=1e-5, atol=1e-5)


def test_timm_backbone_defaults_to_its_pretrained_size():
    _, prep, _ = create_model(BACKBONE, 2, pretrained=False)
    assert prep.img_size == 224


def test_unknown_head_is_refused():
    with pytest.raises(ModelError, match=r"head 'mlp' is not known; choose one of reference, "
                                         r"linear"):
        create_model(BACKBONE, 2, pretrained=False, head="mlp", img_size=32)


def test_heads_differ_as_documented():
    reference, _, _ = create_model(BACKBONE, 4, pretrained=False, img_size=32)
    linear, _, _ = create_model(BACKBONE, 4, pretrained=False, img_size=32, head="linear")
    ref_linears = [m for m in reference.head.modules() if isinstance(m, nn.Linear)]
    lin_linears = [m for m in linear.head.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in ref_linears] == [1024, 4]
    assert [m.out_features for m in lin_linears] == [4]


# --- which parameters train ---------------------------------------------------------------------


def trainable_groups(model) -> list[bool]:
    """Per backbone group: True when all its parameters train, False when none do."""
    flags = []
    for group in backbone_groups(model):
        states = {p.requires_grad for p in group}
        assert len(states) == 1, "a group is partly frozen"
        flags.append(states.pop())
    return flags


def test_backbone_groups_cover_every_body_parameter_once(backbone):
    model, _, _ = backbone
    groups = backbone_groups(model)
    assert len(groups) > 2
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.body.parameters()}
    # Input side first: the stem's convolution opens the first group.
    assert groups[0][0] is model.body.conv_stem.weight


@pytest.mark.parametrize("stages", [0, 1, 3])
def test_set_trainable_leaves_exactly_the_last_groups(backbone, stages):
    model, _, _ = backbone
    n = len(backbone_groups(model))
    returned = set_trainable(model, stages)
    assert trainable_groups(model) == [False] * (n - stages) + [True] * stages
    assert {id(p) for p in returned} == {
        id(p) for p in model.body.parameters() if p.requires_grad}
    assert all(p.requires_grad for p in model.head.parameters())


def test_set_trainable_accepts_the_string_the_cli_gives(backbone):
    model, _, _ = backbone
    set_trainable(model, "2")
    assert trainable_groups(model)[-3:] == [False, True, True]


def test_set_trainable_all_unfreezes_everything(backbone):
    model, _, _ = backbone
    set_trainable(model, 0)
    assert not any(p.requires_grad for p in model.body.parameters())
    returned = set_trainable(model, "all")
    assert all(p.requires_grad for p in model.parameters())
    assert len(returned) == len(list(model.body.parameters()))


def test_set_trainable_out_of_range(backbone):
    model, _, _ = backbone
    n = len(backbone_groups(model))
    with pytest.raises(ModelError, match=rf"between 0 and {n} or 'all', got {n + 1}"):
        set_trainable(model, n + 1)
    with pytest.raises(ModelError, match=r"got -1"):
        set_trainable(model, -1)


def test_frozen_norm_layers_keep_their_statistics(backbone):
    model, _, _ = backbone
    set_trainable(model, 1)
    model.train()
    freeze_norm_stats(model)
    frozen_bn = model.body.bn1  # in the stem, frozen
    last_bn = model.body.bn2  # in the last group, trainable
    assert not frozen_bn.training
    assert last_bn.training
    before = frozen_bn.running_mean.clone()
    model(pixels(2, 64))
    torch.testing.assert_close(frozen_bn.running_mean, before)


def test_all_norm_layers_can_keep_their_statistics_while_training(backbone):
    model, _, _ = backbone
    set_trainable(model, 1)
    model.train()
    freeze_norm_stats(model, trainable_too=True)
    last_bn = model.body.bn2
    assert not last_bn.training and last_bn.weight.requires_grad
    before = last_bn.running_mean.clone()
    model(pixels(2, 64))
    torch.testing.assert_close(last_bn.running_mean, before)


def test_small_cnn_is_a_single_group():
    model, _, _ = create_model("small_cnn", 2, img_size=32)
    assert len(backbone_groups(model)) == 1
    set_trainable(model, 0)
    assert not any(p.requires_grad for p in model.body.parameters())
    set_trainable(model, 1)
    assert all(p.requires_grad for p in model.body.parameters())


def test_normalising_gives_x_minus_mean_over_std_and_leaves_the_input_alone():
    model, _, _ = create_model("small_cnn", 2, img_size=32, pretrained=False)
    for x in (torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8),
              torch.rand(2, 3, 32, 32) * 255):  # float pixels, as a batch-wise warp gives
        before = x.clone()
        assert torch.equal(model.normalise(x), (x.float() - model.mean) / model.std)
        assert torch.equal(x, before)
