"""Early stopping and best-checkpoint selection share one rule, and checkpoints are atomic."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class Monitor:
    """Tracks the best value of one metric (Keras' monitor / mode / min_delta / patience)."""

    monitor: str = "val_loss"
    mode: str = "auto"
    min_delta: float = 0.0
    patience: int = 3
    best: float | None = None
    best_epoch: int = -1
    wait: int = 0

    def __post_init__(self):
        if self.mode == "auto":
            self.mode = "min" if "loss" in self.monitor else "max"

    def is_better(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, value: float) -> bool:
        """Record ``value`` for ``epoch``; True when it is the new best."""
        if self.is_better(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.wait > self.patience - 1 if self.patience > 0 else False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def save_atomic(payload: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by imgclf; plain data only, so ``weights_only`` holds."""
    return torch.load(path, map_location="cpu", weights_only=True)
