"""Per-epoch scalars for TensorBoard, for users who live there."""

from __future__ import annotations

import math
from pathlib import Path

from imgclf.errors import ConfigError


class TensorBoardLogger:
    """Writes every numeric history column of each epoch as a scalar."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'imgclf[tensorboard]'."
            ) from None
        self.writer = SummaryWriter(str(log_dir))

    def __call__(self, row: dict) -> None:
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not math.isnan(value):
                group = "val" if key.startswith("val_") else "train"
                self.writer.add_scalar(f"{group}/{key.removeprefix('val_')}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
