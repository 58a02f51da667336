"""Reading a training history (one dict per epoch, as in history.csv) without torch.

Kept apart from :mod:`imgclf.evaluation`, which loads torch, so that the HTML report can
pick the same best epoch as training and evaluation without importing it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def best_epoch(history: Sequence[Mapping[str, object]], monitor: str = "val_loss") -> int | None:
    """The epoch whose ``monitor`` value was best: lowest for a loss, highest otherwise.

    Rows without the monitor or an epoch, or whose monitor is NaN, are passed over; None
    when no row is left. On a tie the earlier epoch wins for a loss, the later otherwise
    (the order of ``(value, epoch)`` pairs).
    """
    values = [(row[monitor], row["epoch"]) for row in history
              if row.get(monitor) is not None and row.get("epoch") is not None
              and not math.isnan(row[monitor])]
    if not values:
        return None
    pick = min if "loss" in monitor else max
    return int(pick(values)[1])
