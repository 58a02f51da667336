"""One registry for the networks imgclf defines, and one factory for every model.

Names registered here (the small CNNs) are built by their own builders; any other name
is looked up in timm and built as a transfer backbone with a new head.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import timm
from torch import nn

from imgclf.errors import ModelError


@dataclass(frozen=True)
class ModelSpec:
    """A network imgclf defines: how to build it and the input size it was designed for."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    default_size: int


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, description: str, default_size: int):
    """Decorator adding a builder ``fn(num_classes, img_size) -> nn.Module`` to the registry."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ModelError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, fn, description, default_size)
        return fn

    return wrap


def get_spec(name: str) -> ModelSpec | None:
    """The registered spec for ``name``, or None when it is not one of imgclf's own models."""
    return _REGISTRY.get(name)


def list_models(pattern: str = "*", include_timm: bool = False) -> list[str]:
    """Names of imgclf's own models matching ``pattern`` (and timm's, if asked), sorted."""
    names = [n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)]
    if include_timm:
        names += timm.list_models(pattern)
    return sorted(dict.fromkeys(names))


def check_model_name(name: str) -> None:
    """Raise ModelError with close matches unless ``name`` is registered or a timm model
    (with a weights tag timm knows, if it has one: ``resnet18.a1_in1k``)."""
    if name in _REGISTRY:
        return
    if timm.is_model(name):
        arch, _, tag = name.partition(".")
        if tag and name not in timm.list_pretrained(name):
            tags = [known.partition(".")[2] for known in timm.list_pretrained(f"{arch}.*")]
            raise ModelError(f"timm has no weights tagged {tag!r} for {arch}; its tags: "
                             f"{', '.join(tags) or 'none'}.")
        return
    candidates = list(_REGISTRY) + timm.list_models()
    arch = name.split(".", 1)[0]  # resnet18.a1_in1k: the architecture, then a weights tag
    close = difflib.get_close_matches(arch, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ModelError(
        f"Unknown model {name!r}: it is neither one of imgclf's models "
        f"({', '.join(sorted(_REGISTRY))}) nor a timm model.{hint} "
        "`imgclf models PATTERN` lists what can be built."
    )
