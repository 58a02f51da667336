"""Tests for imgclf.history: the best epoch is the one training kept."""

from __future__ import annotations

import math

import pytest

from imgclf.history import Monitor, best_epoch


def rows(monitor: str, values, phase: str = "train", first: int = 1) -> list[dict]:
    return [{"epoch": first + i, monitor: v, "phase": phase} for i, v in enumerate(values)]


@pytest.mark.parametrize("monitor, values, mode, min_delta, expected", [
    ("val_loss", [0.9, 0.5, 0.7, 0.5], "auto", 0.0, 2),  # lowest; a tie keeps the earlier
    ("val_accuracy", [0.5, 0.67, 0.6, 0.67], "auto", 0.0, 2),  # highest, earlier on a tie
    ("val_accuracy", [0.5, 0.52, 0.9, 0.91], "auto", 0.05, 3),  # small gains don't count
    ("val_loss", [0.9, math.nan, 0.4], "auto", 0.0, 3),  # NaN is never best
    ("val_f1", [0.3, 0.2, 0.1], "min", 0.0, 3),  # mode given
], ids=["loss", "accuracy tie", "min_delta", "nan", "mode"])
def test_best_epoch_is_the_monitors_choice(monitor, values, mode, min_delta, expected):
    history = rows(monitor, values)
    assert best_epoch(history, monitor, mode, min_delta) == expected
    tracker = Monitor(monitor, mode, min_delta)
    for row in history:
        tracker.update(row["epoch"], row[monitor])
    assert tracker.best_epoch == expected


def test_best_epoch_of_the_last_phase():
    # The final weights are the fine-tuning phase's best, even if the head phase's best
    # value was better.
    history = rows("val_loss", [0.2, 0.3]) + rows("val_loss", [0.5, 0.4, 0.45], "finetune", 3)
    assert best_epoch(history) == 4


def test_no_best_epoch_without_values():
    assert best_epoch([]) is None
    assert best_epoch(rows("val_loss", [math.nan])) is None
    assert best_epoch([{"epoch": 1, "loss": 0.3}]) is None  # no validation
