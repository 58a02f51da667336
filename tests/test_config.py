"""Tests for imgclf.config: layering, unknown keys, validation, and the saved config.yaml."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from imgclf.cli.main import build_parser
from imgclf.cli.train import config_from_args
from imgclf.config import Config, build_config, load_config
from imgclf.errors import ConfigError, RunError


def write_yaml(path, values: dict):
    path.write_text(yaml.safe_dump(values))
    return path


# --- layering: defaults < method preset < YAML file < overrides ---------------------------------


def test_defaults_then_preset():
    plain = Config()
    config = build_config("transfer")
    assert plain.train.optimizer == "adam" and plain.model.name == "small_cnn"
    # The transfer preset replaces defaults ...
    assert config.method == "transfer"
    assert config.train.optimizer == "adamw"
    assert config.train.weight_decay == pytest.approx(0.05)
    assert config.model.name == "tf_efficientnet_lite0"
    # ... and leaves the keys it does not name at their defaults.
    assert config.train.batch_size == plain.train.batch_size
    assert config.train.min_delta == plain.train.min_delta


def test_file_beats_preset_and_overrides_beat_file(tmp_path):
    file = write_yaml(tmp_path / "c.yaml", {
        "seed": 7,
        "train": {"optimizer": "sgd", "lr": 0.05, "epochs": 4},
        "model": {"dropout": 0.3},
    })
    config = build_config("transfer", file, {"train": {"lr": 0.01}, "seed": 3})
    assert config.train.optimizer == "sgd"  # file over the transfer preset's adamw
    assert config.train.epochs == 4  # file over the preset's 30
    assert config.model.dropout == pytest.approx(0.3)  # file over the default
    assert config.train.lr == pytest.approx(0.01)  # override over the file
    assert config.seed == 3  # override over the file
    assert config.train.weight_decay == pytest.approx(0.05)  # preset, untouched by either


def test_method_in_file_selects_its_preset(tmp_path):
    file = write_yaml(tmp_path / "c.yaml", {"method": "augment"})
    config = build_config("scratch", file)
    assert config.method == "augment"
    assert config.augment.preset == "reference"
    assert config.model.name == "small_cnn_wide"


def test_method_override_beats_method_in_file(tmp_path):
    """The method, its preset and ``config.method`` must agree, and flags beat the file."""
    file = write_yaml(tmp_path / "c.yaml", {"method": "scratch", "train": {"epochs": 4}})
    config = build_config("scratch", file, {"method": "transfer"})
    assert config.method == "transfer"
    assert config.train.optimizer == "adamw"  # the transfer preset
    assert config.train.epochs == 4


def test_cli_method_flag_beats_method_in_file(tmp_path):
    file = write_yaml(tmp_path / "c.yaml", {"method": "scratch"})
    args = build_parser().parse_args(
        ["train", str(tmp_path), "--method", "transfer", "--config", str(file), "--lr", "0.02"])
    config = config_from_args(args)
    assert config.method == "transfer"
    assert config.model.name == "tf_efficientnet_lite0"
    assert config.train.lr == pytest.approx(0.02)
    assert config.data.data == str(tmp_path)


def test_yaml_exponent_floats_are_read_as_numbers(tmp_path):
    # PyYAML reads ``1e-3`` (no dot) as a string; people write learning rates that way.
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  lr: 1e-3\n  finetune_lr: 5e-5\n")
    config = build_config("scratch", file)
    assert config.train.lr == pytest.approx(1e-3)
    assert config.train.finetune_lr == pytest.approx(5e-5)


def test_numpy_scalars_are_taken_as_pythons():
    # As a notebook's sweep gives them: for epochs in np.arange(1, 4).
    config = build_config("scratch", None, {
        "seed": np.int64(3), "data": {"val_fraction": np.float32(0.25)},
        "train": {"epochs": np.int64(2), "lr": np.float32(1e-3),
                  "restore_best": np.bool_(False)}})
    assert (config.seed, config.train.epochs, config.train.restore_best) == (3, 2, False)
    assert type(config.seed) is int and type(config.train.lr) is float
    assert config.data.val_fraction == 0.25 and config.train.lr == 0.001  # as written
    assert build_config("scratch", None, {"train": {"epochs": np.array(4)}}).train.epochs == 4
    with pytest.raises(ConfigError, match=r"train\.epochs must be an integer, got 2\.5"):
        build_config("scratch", None, {"train": {"epochs": np.float64(2.5)}})


def test_overrides_are_not_mutated():
    overrides = {"method": "augment", "train": {"epochs": 2}}
    build_config("scratch", None, overrides)
    assert overrides == {"method": "augment", "train": {"epochs": 2}}


# --- unknown keys -------------------------------------------------------------------------------


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    file = write_yaml(tmp_path / "c.yaml", {"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' in .*c\.yaml\.train; valid keys "
                                          r"are: amp, batch_size, .*\bepochs\b"):
        build_config("scratch", file)


def test_unknown_section_in_file_lists_sections(tmp_path):
    file = write_yaml(tmp_path / "c.yaml", {"trainer": {"epochs": 3}})
    with pytest.raises(ConfigError,
                       match=r"unknown key 'trainer'.*augment, data, method, model, out, seed, "
                             r"train"):
        build_config("scratch", file)


def test_unknown_key_in_overrides_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'lr_rate' in options\.train.*valid keys "
                                          r"are: .*\blr\b"):
        build_config("scratch", None, {"train": {"lr_rate": 0.1}})


def test_section_given_as_scalar():
    with pytest.raises(ConfigError, match=r"train must be a mapping"):
        build_config("scratch", None, {"train": 5})


def test_unreadable_or_non_mapping_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"cannot read config file"):
        build_config("scratch", bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"must hold a mapping"):
        build_config("scratch", listing)
    with pytest.raises(ConfigError, match=r"cannot read config file"):
        build_config("scratch", tmp_path / "missing.yaml")
    twice = tmp_path / "twice.yaml"
    for text, key, where in (
            ("train: {lr: 0.01}\ntrain: {batch_size: 4}\n", "train", "2, column 1"),
            ("train: {epochs: 1, epochs: 2}\n", "epochs", "1, column 20")):
        twice.write_text(text)
        with pytest.raises(ConfigError, match=rf"^cannot read config file {twice}: '{key}' is "
                                              rf"given twice at line {where}\.$"):
            build_config("scratch", twice)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ConfigError, match=r"binary.yaml: it is not UTF-8 text"):
        build_config("scratch", binary)


# --- invalid values -----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"train": {"epochs": 0}}, r"train\.epochs must be >= 1, got 0"),
    ({"train": {"finetune_epochs": 0}}, r"train\.finetune_epochs must be >= 1, got 0"),
    ({"data": {"workers": -3}}, r"data\.workers must be >= 0 \(0: load in the training "
                                r"process\), got -3"),
    ({"train": {"warmup_epochs": 0}}, r"train\.warmup_epochs must be >= 1, got 0"),
    ({"train": {"batch_size": 0}}, r"train\.batch_size must be >= 1, got 0"),
    ({"train": {"lr": 0}}, r"train\.lr must be > 0"),
    ({"train": {"lr": float("inf")}}, r"train\.lr must be > 0 and finite, got inf"),
    ({"train": {"finetune_lr": -1}}, r"train\.finetune_lr must be > 0 and finite, got -1"),
    ({"train": {"weight_decay": -1}}, r"train\.weight_decay must be >= 0 and finite, got -1"),
    ({"train": {"weight_decay": float("nan")}}, r"train\.weight_decay must be >= 0"),
    ({"seed": -1}, r"seed must be in 0\.\.4294967295, got -1"),
    ({"seed": 2**32}, r"seed must be in 0\.\.4294967295, got 4294967296"),
    ({"train": {"optimizer": "adagrad"}}, r"train\.optimizer must be adam, adamw or sgd, got "
                                          r"'adagrad'"),
    ({"train": {"finetune": "x"}}, r"train\.finetune must be a number of stages \(1 or more\) "
                                   r"or 'all', got 'x'"),
    ({"method": "transfer", "train": {"finetune": 0}}, r"train\.finetune must be a number of "
                                                        r"stages \(1 or more\) or 'all', got '0'"),
    ({"train": {"schedule": "step"}}, r"train\.schedule must be"),
    ({"train": {"monitor": "f1"}}, r"train\.monitor must be"),
    ({"train": {"class_weight": "balanced"}}, r"train\.class_weight must be auto or none"),
    ({"train": {"label_smoothing": 1.0}}, r"train\.label_smoothing must be in \[0, 1\)"),
    ({"train": {"tta": "yes"}}, r"train\.tta must be off, on or auto, got 'yes'"),
    ({"model": {"head": "lineer"}}, r"model\.head must be reference or linear, got 'lineer'"),
    ({"data": {"val_fraction": 1.5}}, r"data\.val_fraction must be more than 0 and less "
                                      r"than 1, got 1\.5"),
    ({"data": {"val_fraction": 0}}, r"data\.val_fraction must be more than 0 and less than 1, "
                                    r"got 0"),
    ({"train": {"patience": -1}}, r"train\.patience must be >= 0 \(0: no early stopping\)"),
    ({"train": {"min_delta": -0.1}}, r"train\.min_delta must be >= 0, got -0\.1"),
    ({"augment": {"mixup": -1}}, r"augment\.mixup must be >= 0, got -1"),
    ({"augment": {"cutmix": -0.5}}, r"augment\.cutmix must be >= 0"),
    ({"model": {"dropout": 1.0}}, r"model\.dropout must be in \[0, 1\)"),
    ({"train": {"finetune": 2}}, r"train\.finetune applies to --method transfer .*leave out "
                                 r"--finetune, or train\.finetune in a config file"),
    ({"model": {"img_size": 0}}, r"model\.img_size must be >= 1 \(or left out"),
    ({"augment": {"preset": "bogus"}}, r"augment\.preset must be none, flip, reference, "),
    ({"model": {"weights": "w.pth", "pretrained": False}},
     r"model\.weights \(w\.pth\) loads pretrained weights, and model\.pretrained is false"),
    ({"method": "distill"}, r"method 'distill' is not known; choose one of scratch, augment, "
                            r"transfer"),
])
def test_invalid_values_raise_with_their_message(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config("scratch", None, overrides)


@pytest.mark.parametrize("finetune", ["all", "2", 2])
def test_valid_finetune_values(finetune):
    assert build_config("transfer", None, {"train": {"finetune": finetune}}).train.finetune \
        in ("all", "2", 2)


def test_invalid_value_in_file_raises(tmp_path):
    file = write_yaml(tmp_path / "c.yaml", {"train": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"train\.epochs must be >= 1"):
        build_config("scratch", file)


@pytest.mark.parametrize("section, key, value", [
    ("train", "epochs", "ten"),
    ("train", "epochs", 2.5),
    ("train", "lr", "fast"),
    ("train", "restore_best", "no"),
    ("seed", None, "abc"),
])
def test_wrong_type_is_a_config_error(section, key, value):
    """A value of the wrong type is a ConfigError naming the key, not a TypeError later."""
    overrides = {section: {key: value}} if key else {section: value}
    name = f"{section}.{key}" if key else section
    with pytest.raises(ConfigError, match=rf"{name}.*{value!r}"):
        build_config("scratch", None, overrides)


def test_yaml_on_and_off_are_the_settings_on_and_off(tmp_path):
    # YAML 1.1 reads bare on/off as booleans
    (tmp_path / "c.yaml").write_text("train:\n  tta: off\n  amp: off\n")
    config = build_config("scratch", tmp_path / "c.yaml")
    assert (config.train.tta, config.train.amp) == ("off", "off")
    (tmp_path / "c.yaml").write_text("train:\n  tta: on\n")
    assert build_config("scratch", tmp_path / "c.yaml").train.tta == "on"
    with pytest.raises(ConfigError, match=r"train\.restore_best must be .*'no'"):
        build_config("scratch", None, {"train": {"restore_best": "no"}})  # strings stay


# --- the saved config.yaml ----------------------------------------------------------------------


def test_saved_config_round_trips(tmp_path):
    config = build_config("transfer", None, {
        "seed": 5, "out": str(tmp_path / "run"),
        "data": {"data": "/data/x", "val_fraction": 0.25, "workers": 0},
        "model": {"name": "mobilenetv2_100", "pretrained": False, "img_size": 64},
        "train": {"lr": 1e-5, "finetune": "all", "epochs": 2, "class_weight": "auto"},
        "augment": {"mixup": 0.2},
    })
    config.save(tmp_path / "config.yaml")
    loaded = load_config(tmp_path / "config.yaml")
    assert loaded == config
    assert loaded.train.lr == pytest.approx(1e-5) and isinstance(loaded.train.lr, float)
    assert loaded.method == "transfer"


def test_load_config_rejects_unknown_keys(tmp_path):
    path = write_yaml(tmp_path / "config.yaml", {**Config().to_dict(), "extra": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'extra'"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (": :\n", r"is not valid YAML \(expected <block end>, but found ':' at line 1, column 1\); "
                  r"it is written by `imgclf train`: train the run again or repair the file\.$"),
        ("- a\n", r"holds list, not a mapping of config sections; train the run again"),
        ("", r"holds nothing, not a mapping of config sections"),
    ],
    ids=["not-yaml", "list", "empty"],
)
def test_load_config_names_a_damaged_file_on_one_line(tmp_path, text, match):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(RunError, match=rf"^{re.escape(str(path))} {match}") as info:
        load_config(path)
    assert "\n" not in str(info.value)
