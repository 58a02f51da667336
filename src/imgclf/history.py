"""Reading a training history (one dict per epoch, as in history.csv) without torch.

Kept apart from :mod:`imgclf.evaluation`, which loads torch, so that the HTML report can
pick the same best epoch as training and evaluation without importing it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Monitor:
    """Tracks the best value of one metric (Keras' monitor / mode / min_delta / patience).
    Early stopping, the best checkpoint and the best epoch marked on learning curves all
    follow it."""

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
        return 0 < self.patience <= self.wait  # patience 0: never stop early

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def best_epoch(history: Sequence[Mapping[str, object]], monitor: str = "val_loss",
               mode: str = "auto", min_delta: float = 0.0) -> int | None:
    """The epoch whose weights training kept as best (best.pt): a :class:`Monitor` replayed
    over the last phase's epochs (each phase has its own, and the final weights are the last
    phase's best unless ``restore_best`` was off), so a tie goes to the earlier epoch. None
    when no epoch has a value."""
    last_phase = history[-1].get("phase") if history else None
    tracker = Monitor(monitor, mode, min_delta)
    for row in history:
        if row.get("phase") == last_phase and row.get("epoch") is not None:
            tracker.update(int(row["epoch"]), row.get(monitor))
    return tracker.best_epoch if tracker.best is not None else None


def read_history(path: Path) -> list[dict[str, str]]:
    """The epochs of a ``history.csv`` as training wrote them, one dict of texts each.
    ValueError when the file is not such a history (no ``epoch`` column, bad UTF-8);
    OSError when it cannot be read."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "epoch" not in (reader.fieldnames or ()):
            raise ValueError("it is not a training history (no epoch column)")
        return [{key: value for key, value in row.items() if key is not None}
                for row in reader]
