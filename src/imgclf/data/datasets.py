"""Torch datasets over cached arrays, and the loaders built on them.

Batches are fetched whole (``__getitems__``): one gather from the uint8 array per batch
rather than one Python call per image, which keeps the warm pipeline far ahead of the
model. Images stay uint8 until they reach the model, whose first step normalises, or a
batch-wise warp, which samples in float and hands the model its float result.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from imgclf.engine import dist
from imgclf.machine import available_cores


class ArrayDataset(Dataset):
    """(N, H, W, 3) uint8 images, or (N, ...) feature arrays, with integer labels."""

    def __init__(self, array: np.ndarray, labels, transform=None, images: bool = True):
        self.array = array
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.images = images
        if len(self.labels) != len(self.array):
            raise ValueError(
                f"labels has {len(self.labels)} entries but array has {len(self.array)} rows"
            )
        # A batch-wise warp reads each batch once and keeps none of it: its rows are gathered
        # into one reused buffer (cache-warm, two threads), from a torch view of the array.
        # A read-only array (a memory-mapped cache) is gathered by numpy instead.
        self._rows = (torch.from_numpy(array) if images and array.flags.writeable
                      and getattr(transform, "batched", False) else None)
        self._gathered: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def _gather(self, idx: np.ndarray) -> torch.Tensor:
        if self._rows is None:
            return torch.from_numpy(np.ascontiguousarray(self.array[idx]))
        shape = (len(idx), *self._rows.shape[1:])
        if self._gathered is None or self._gathered.shape != shape:
            self._gathered = torch.empty(shape, dtype=self._rows.dtype)
        return torch.index_select(self._rows, 0, torch.from_numpy(idx), out=self._gathered)

    def __getitems__(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        x = self._gather(idx)
        if self.images:
            x = x.permute(0, 3, 1, 2)
            if getattr(self.transform, "batched", False):
                x = self.transform(x)
            elif self.transform is not None:
                x = torch.stack([self.transform(img) for img in x])
        return x, torch.from_numpy(self.labels[idx])


class ShardSampler(Sampler):
    """One rank's share of each epoch: every sample exactly once across ranks, no padding.

    PyTorch's DistributedSampler pads the last shard with repeats so all ranks take the
    same number of steps; imgclf instead lets shards differ by one sample and the loop
    joins uneven ranks (``torch.distributed.algorithms.Join``), so metrics and epochs
    count each image once.
    """

    def __init__(self, size: int, rank: int, world: int, shuffle: bool, seed: int = 0):
        self.size, self.rank, self.world = size, rank, world
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.size,
                                   generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        return iter(order[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))


def _whole_batch(batch):
    """``__getitems__`` already returns a collated batch."""
    return batch


def default_workers(transform) -> int:
    """Loader processes: none for plain array slicing or batch-wise transforms (cheaper
    in-process), else one per spare core, at most 4, since per-image augmentation is
    Python work."""
    if transform is None or getattr(transform, "batched", False):
        return 0
    return max(1, min(4, available_cores() - 1))


def make_loader(
    dataset: ArrayDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    workers: int | None = None,
) -> DataLoader:
    """A loader that shards over ranks when running distributed, seeded for repeatability.

    Loader processes start afresh each epoch, seeded from the loader's generator: a
    checkpoint holds that generator's state, so a resumed run augments as an uninterrupted
    one would (persistent processes would carry random states no checkpoint holds)."""
    workers = default_workers(dataset.transform) if workers is None else workers
    sampler = None
    generator = torch.Generator().manual_seed(seed)
    if dist.world_size() > 1:
        sampler = ShardSampler(len(dataset), dist.rank(), dist.world_size(), shuffle, seed)
        shuffle = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_whole_batch,
        generator=generator,
        worker_init_fn=_seed_worker if workers > 0 else None,
    )


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)
