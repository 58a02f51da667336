"""Checkpoints: written atomically, so a crash never leaves half a file, and read back."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_atomic(payload: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by imgclf; plain data only, so ``weights_only`` holds."""
    return torch.load(path, map_location="cpu", weights_only=True)
