"""Run configuration: dataclasses in sections, layered defaults < method preset < YAML < flags.

Unknown sections or keys are errors that list the valid ones. The resolved configuration
is written to every run folder as ``config.yaml`` and read back by ``imgclf evaluate``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from imgclf.errors import ConfigError, RunError
from imgclf.paths import (
    CONFIG_FILE,
    absolute,
    optional_path,
    parse_problem,
    path_argument,
    read_run_config,
    write_text,
)

INFERENCE_BATCH = 64
"""Images per batch where no gradient is kept: evaluation, prediction, frozen features."""
AUGMENT_PRESETS = ("none", "flip", "reference", "trivial", "randaugment")

METHODS = ("scratch", "augment", "transfer")
DEFAULT_BACKBONE = "tf_efficientnet_lite0"


@dataclass
class DataSection:
    data: str | None = None
    train: str | None = None
    val: str | None = None
    test: str | None = None
    val_fraction: float = 0.2
    cache: bool = True
    workers: int | None = None


@dataclass
class AugmentSection:
    preset: str = "none"
    mixup: float = 0.0
    cutmix: float = 0.0


@dataclass
class ModelSection:
    name: str = "small_cnn"
    head: str = "reference"
    pretrained: bool = True
    weights: str | None = None
    img_size: int | None = None
    dropout: float = 0.2


# What computes a frozen backbone's cached features: ONNX Runtime on a CPU where it is
# installed ("auto"), or always PyTorch, or always ONNX Runtime.
FEATURE_ENGINES = ("auto", "torch", "onnx")


@dataclass
class TrainSection:
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "none"
    label_smoothing: float = 0.0
    class_weight: str | None = None
    monitor: str = "val_loss"
    mode: str = "auto"
    min_delta: float = 0.0
    patience: int = 3
    restore_best: bool = True
    freeze: bool = True
    finetune: str | None = None
    warmup_epochs: int = 1
    finetune_epochs: int = 5
    finetune_lr: float = 1e-4
    finetune_norm_stats: bool = False
    feature_cache: bool = True
    feature_engine: str = "auto"
    tta: str = "off"
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    tensorboard: bool = False
    sync_bn: bool = False


TRANSFER_SETTINGS = ("model.head", "model.dropout", "model.weights", "train.finetune")
"""Settings of a pretrained backbone and its new head, which imgclf's own networks do not
have: ``compare`` gives them to its transfer runs alone."""
CHOICES = {
    "model.head": ("reference", "linear"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.schedule": ("none", "cosine", "onecycle", "plateau"),
    "train.class_weight": ("auto", "none"),
    "train.monitor": ("val_loss", "val_accuracy", "loss", "accuracy"),
    "train.mode": ("auto", "min", "max"),
    "train.feature_engine": FEATURE_ENGINES,
    "train.tta": ("off", "on", "auto"),
    "train.amp": ("auto", "bf16", "off"),
    "augment.preset": AUGMENT_PRESETS,
}
"""The settings that take one of a few names, and those names: checked by ``validate``,
offered by the command line's options."""
PATH_SETTINGS = ("data.data", "data.train", "data.val", "data.test", "model.weights")
"""The settings that name a file or folder, relative to the working folder unless absolute."""
DATA_PATH_SETTINGS = tuple(key for key in PATH_SETTINGS if key.startswith("data."))
"""Where a run's images come from."""


def flat_settings(tree: dict, prefix: str = "") -> dict:
    """A config's nested sections (``Config.to_dict``, config.yaml) as dotted keys:
    ``{"train.lr": 0.001, ...}``."""
    items = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            items.update(flat_settings(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def changes_text(changes: dict[str, tuple]) -> str:
    """Settings that differ, in words: {"train.lr": (0.01, 0.001)} as 'train.lr 0.01 against
    0.001' (the first value is the one asked for now)."""
    return "; ".join(f"{key} {'none' if one is None else one} against "
                     f"{'none' if two is None else two}" for key, (one, two) in changes.items())


def resolved_paths(config: dict) -> dict[str, str]:
    """The ``PATH_SETTINGS`` that a run config (as its config.yaml holds it) sets, each as
    the path it names with links followed: one folder compares equal by any name."""
    found = {}
    for dotted in PATH_SETTINGS:
        section, key = dotted.split(".")
        values = config.get(section)
        if isinstance(values, dict) and values.get(key):
            found[dotted] = str(Path(values[key]).resolve())
    return found


@dataclass
class Config:
    method: str = "scratch"
    seed: int = 42
    out: str | None = None
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def make_paths_absolute(self) -> None:
        """Give the settings that name files or folders (``PATH_SETTINGS``) as absolute
        paths, so that the config saved in a run serves from any working folder (resuming,
        ``--config RUN/config.yaml``)."""
        for dotted in PATH_SETTINGS:
            section, key = dotted.split(".")
            value = getattr(getattr(self, section), key)
            if value is not None:
                setattr(getattr(self, section), key, str(absolute(value)))

    def save(self, path: Path) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


PRESETS: dict[str, dict[str, Any]] = {
    # The reference study's three methods, with its optimiser, batch size and budget.
    # The small CNNs overfit within a few epochs at Adam's 1e-3; cutting the rate when
    # val_loss stalls, and label smoothing, buy two to four points of test accuracy.
    # Averaging in the mirror image's prediction ("tta": "auto", kept only when it helps
    # on validation) raised scratch's validation accuracy on each of five seeds (by 1.4
    # points on average).
    "scratch": {
        "model": {"name": "small_cnn"},
        "augment": {"preset": "none"},
        "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 30,
                  "patience": 3, "schedule": "plateau", "label_smoothing": 0.1,
                  "tta": "auto"},
    },
    "augment": {
        "model": {"name": "small_cnn_wide"},
        "augment": {"preset": "reference"},
        "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 30,
                  "patience": 5, "schedule": "plateau", "label_smoothing": 0.1,
                  "tta": "auto"},
    },
    "transfer": {
        "model": {"name": DEFAULT_BACKBONE, "pretrained": True, "head": "reference"},
        "augment": {"preset": "none"},
        # A head over frozen features overfits within a few epochs at Adam's 1e-3;
        # a lower rate with decoupled weight decay and label smoothing generalises better.
        "train": {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.05,
                  "label_smoothing": 0.1, "batch_size": 32, "epochs": 30, "patience": 3,
                  "freeze": True},
    },
}


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as field type ``hint`` wants it, or a ConfigError naming the key.

    Numbers are accepted for floats, and so are numeric strings: PyYAML reads ``1e-3``
    (no dot) as a string. Paths and integers are accepted for strings (``finetune: 2``),
    and so are booleans as "on" and "off": PyYAML reads ``tta: off`` as false. NumPy's
    scalars count as Python's (``epochs=np.int64(5)`` from a sweep over ``np.arange``).
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, np.floating):  # np.float32(1e-3) as written, not 0.00100000004749
        value = float(str(value))
    elif isinstance(value, np.generic):
        value = value.item()
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return value
    if bool in allowed and isinstance(value, bool):
        return value
    if not isinstance(value, bool):
        if int in allowed and isinstance(value, int):
            return value
        if float in allowed and isinstance(value, (int, float)):
            return float(value)
        if float in allowed and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if str in allowed and isinstance(value, (str, int, os.PathLike)):
            return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    elif str in allowed:
        return "on" if value else "off"
    expected = " or ".join(_TYPE_NAMES.get(t, "null") for t in allowed)
    raise ConfigError(f"{name} must be {expected}, got {value!r}.")


def _merge_section(target: Any, values: dict, where: str) -> None:
    names = {f.name for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"unknown key {key!r} in {where}; valid keys are: {', '.join(sorted(names))}."
            )
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} must be a mapping, got {value!r}.")
            _merge_section(current, value, f"{where}.{key}")
        else:
            setattr(target, key, _coerce(value, hints[key], f"{where}.{key}"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: YAML would keep the
    last and silently drop the other, a whole section's settings at the top level."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the safe loader refuses such a key itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def build_config(
    method: str = "scratch",
    file: str | Path | None = None,
    overrides: dict | None = None,
) -> Config:
    """Defaults, then the method's preset, then a YAML file, then ``overrides`` (nested)."""
    file_values: dict = {}
    if file is not None:
        try:
            text = path_argument(file, "config").read_text(encoding="utf-8")
            file_values = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read config file {file}: it is not UTF-8 text (a "
                              "YAML file is expected).") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot read config file {file}: {parse_problem(exc)}.") from None
        if not isinstance(file_values, dict):
            raise ConfigError(f"config file {file} must hold a mapping of sections.")
    overrides = copy.deepcopy(overrides or {})
    method = overrides.pop("method", None) or file_values.get("method") or method
    if method not in METHODS:
        raise ConfigError(f"method {method!r} is not known; choose one of {', '.join(METHODS)}.")
    config = Config(method=method)
    _merge_section(config, PRESETS[method], "preset")
    _merge_section(config, file_values, str(file) if file else "config")
    _merge_section(config, overrides, "options")
    config.method = method  # the file's ``method`` key, when an override chose another
    validate(config)
    return config


def load_config(path: Path) -> Config:
    """Read a saved ``config.yaml`` back (no preset applied: it is already resolved).
    RunError when the file is unreadable or damaged."""
    _, values = read_run_config(Path(path))
    config = Config()
    _merge_section(config, values, str(path))
    return config


def resume_config(out: str | Path | None, given: list[str], flag: str = "--out") -> Config:
    """The settings of the interrupted run in ``out``, to resume it there (wherever it was
    started). ``given`` names any other settings passed along, which a resume refuses:
    it goes on with the ones the run started with."""
    if out is None:
        raise RunError(f"resuming needs {flag} RUN_DIR, the folder of the run to continue.")
    saved = Path(out) / CONFIG_FILE
    if not saved.is_file():
        raise RunError(f"cannot resume: {saved} does not exist. Pass {flag} with the folder "
                       "of the interrupted run.")
    if given:
        raise RunError(f"a resumed run goes on with the settings it was started with "
                       f"({saved}); give only {flag} with it.")
    config = load_config(saved)
    config.out = str(out)
    try:
        validate(config)  # as edited since, say
    except ConfigError as exc:
        raise ConfigError(f"cannot resume: in {saved}, {exc}") from None
    for dotted in DATA_PATH_SETTINGS:
        folder = getattr(config.data, dotted.split(".")[1])
        if folder is not None and not Path(folder).is_dir():
            raise RunError(f"cannot resume: the run's {dotted} folder {folder} (as {saved} "
                           f"names it) does not exist. If the dataset moved, write its new "
                           f"place as {dotted} in {saved}, then resume.")
    return config


def whole_number(value, what: str, hint: str = "") -> int:
    """``value`` as an int when it is a whole number, at least 1 (NumPy's integers too, not
    True); ConfigError naming it ``what`` otherwise, with ``hint`` after the rule."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, Integral) or value < 1:
        raise ConfigError(f"{what} must be a whole number, at least 1{hint}, got {value!r}.")
    return int(value)


def validate(config: Config) -> None:
    """Check values that would otherwise fail late, with the fix in the message."""
    t = config.train
    checks = [
        (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
        (t.warmup_epochs >= 1, f"train.warmup_epochs must be >= 1, got {t.warmup_epochs}"),
        (t.finetune_epochs >= 1,
         f"train.finetune_epochs must be >= 1, got {t.finetune_epochs}"),
        (config.data.workers is None or config.data.workers >= 0,
         f"data.workers must be >= 0 (0: load in the training process), got "
         f"{config.data.workers}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
        (0 < t.lr < math.inf, f"train.lr must be > 0 and finite, got {t.lr}"),
        (0 < t.finetune_lr < math.inf,
         f"train.finetune_lr must be > 0 and finite, got {t.finetune_lr}"),
        (0 <= t.weight_decay < math.inf,
         f"train.weight_decay must be >= 0 and finite, got {t.weight_decay}"),
        (0 <= config.seed < 2**32, f"seed must be in 0..{2**32 - 1}, got {config.seed}"),
        (0 < config.data.val_fraction < 1,
         f"data.val_fraction must be more than 0 and less than 1, got "
         f"{config.data.val_fraction}"),
        (0 <= t.label_smoothing < 1,
         f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}"),
        (t.patience >= 0, f"train.patience must be >= 0 (0: no early stopping), got "
                          f"{t.patience}"),
        (t.min_delta >= 0, f"train.min_delta must be >= 0, got {t.min_delta}"),
        (config.augment.mixup >= 0, f"augment.mixup must be >= 0, got {config.augment.mixup}"),
        (config.augment.cutmix >= 0,
         f"augment.cutmix must be >= 0, got {config.augment.cutmix}"),
        (0 <= config.model.dropout < 1,
         f"model.dropout must be in [0, 1), got {config.model.dropout}"),
        (config.model.img_size is None or config.model.img_size >= 1,
         f"model.img_size must be >= 1 (or left out for the model's own), got "
         f"{config.model.img_size}"),
        (config.model.pretrained or config.model.weights is None,
         f"model.weights ({config.model.weights}) loads pretrained weights, and "
         "model.pretrained is false (--no-pretrained): give one of the two"),
    ]
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        optional = getattr(type(getattr(config, section))(), key) is None
        allowed_names = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        checks.append((value in allowed or (optional and value is None),
                       f"{dotted} must be {allowed_names}, got {value!r}"))
    if t.finetune is not None:
        ok = str(t.finetune) == "all" or (str(t.finetune).isdigit() and int(t.finetune) >= 1)
        checks.append((ok, f"train.finetune must be a number of stages (1 or more) or 'all', "
                           f"got {t.finetune!r}"))
        checks.append((config.method == "transfer",
                       f"train.finetune applies to --method transfer (the model here trains "
                       f"whole under {config.method}); leave out --finetune, or "
                       "train.finetune in a config file"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message + ".")
    for dotted in (*PATH_SETTINGS, "out"):
        *section, key = dotted.split(".")
        optional_path(getattr(getattr(config, section[0]) if section else config, key), dotted)
