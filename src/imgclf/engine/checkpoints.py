"""Checkpoints: written atomically, so a crash never leaves half a file, and read back."""

from __future__ import annotations

from pathlib import Path

import torch

from imgclf.errors import RunError
from imgclf.paths import load_torch_file, written_whole


def save_atomic(payload: dict, path: Path) -> None:
    """``torch.save`` through ``written_whole``: a crash never leaves half a file."""
    with written_whole(path) as tmp:
        torch.save(payload, tmp)


CHECKPOINT_KEYS = ("classes", "preprocessing", "model_config", "model")
"""What every checkpoint imgclf writes holds (``model.pt``, ``best.pt``, ``last.pt``)."""
CHECKPOINT_FORMAT = 1
"""The layout of a checkpoint's entries (its ``format``); a later imgclf that changes the
layout writes a higher number, which this one refuses to read."""


class NotACheckpoint(RunError):
    """A file read as a checkpoint is another kind of file, or a damaged one."""


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by imgclf; plain data only, so ``weights_only`` holds.

    Raises NotACheckpoint (a RunError) naming ``path`` when it is another kind of file or
    a damaged one, and RunError when it is of a later ``CHECKPOINT_FORMAT``.
    """
    not_ours = (f"{path} is not an imgclf checkpoint (a run's model.pt, best.pt or last.pt)"
                " or it is damaged; an export (ONNX, TorchScript) is not one either: give the "
                "run folder written by `imgclf train`, or its model.pt.")
    ckpt = load_torch_file(path, NotACheckpoint(not_ours))
    if not isinstance(ckpt, dict) or not all(key in ckpt for key in CHECKPOINT_KEYS):
        raise NotACheckpoint(not_ours)
    written = ckpt.get("format", CHECKPOINT_FORMAT)
    if not isinstance(written, int) or written > CHECKPOINT_FORMAT:
        raise RunError(f"{path} was written by a later imgclf (checkpoint format {written}; "
                       f"this one reads format {CHECKPOINT_FORMAT}): upgrade imgclf to use it.")
    return ckpt
