"""Data pipeline speed: decoding cold, reading the uint8 cache warm, and the loader's share
of a training epoch.

    python bench/bench_data.py --data ../shared/datasets/intel-scenes --size 150

Cold = decode + resize every JPEG into a fresh cache folder; warm = the same call once the
cache exists (what every later epoch and run pays). The loader share compares iterating
the training loader alone with training steps on the same batches, for the scratch preset
(small_cnn, no augmentation), the augment preset (small_cnn_wide, reference augmentation)
and small_cnn with the reference augmentation (`--method augment --model small_cnn`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from imgclf.data.cache import load_images
from imgclf.data.datasets import ArrayDataset, make_loader
from imgclf.data.layout import detect_layout, find_classes, scan_split
from imgclf.data.transforms import create_transform
from imgclf.engine.runtime import resolve_runtime
from imgclf.models.factory import create_model


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>10.0f} img/s  ({seconds:.2f} s for {count})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder (train split is used)")
    parser.add_argument("--size", type=int, default=150, help="decode size in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60, help="training steps for the share")
    args = parser.parse_args()

    layout = detect_layout(args.data)
    split = scan_split("train", layout.train, find_classes(layout.train))
    size = (args.size, args.size)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["IMGCLF_CACHE_DIR"] = cache
        tic = time.perf_counter()
        decoded = load_images(split.paths, size, "bilinear")
        cold = time.perf_counter() - tic
        tic = time.perf_counter()
        decoded = load_images(split.paths, size, "bilinear")
        warm = time.perf_counter() - tic
    n = len(decoded.paths)
    print(f"{n} images at {args.size}px, {os.cpu_count()} cores")
    print(f"cold (decode + resize + write cache): {_rate(n, cold)}")
    print(f"warm (read cache into memory):        {_rate(n, warm)}")

    labels = [split.labels[i] for i in decoded.kept]
    rt = resolve_runtime("cpu")
    for preset, name in (("none", "small_cnn"), ("reference", "small_cnn"),
                         ("reference", "small_cnn_wide")):
        ds = ArrayDataset(decoded.array, labels, create_transform(preset, size))
        loader = make_loader(ds, args.batch_size, shuffle=True)
        tic = time.perf_counter()
        for i, _ in enumerate(loader):
            if i + 1 == args.steps:
                break
        fetch = time.perf_counter() - tic
        print(f"loader alone, augment={preset:<9}       "
              f"{_rate(args.steps * args.batch_size, fetch)}")

        model, _, _ = create_model(name, len(set(labels)), img_size=args.size)
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        tic = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            with rt.autocast():
                loss = torch.nn.functional.cross_entropy(model(rt.to_input(x)).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i + 1 == args.steps:
                break
        total = time.perf_counter() - tic
        share = 100 * (1 - fetch / total)
        print(f"{name + ' steps with that loader:':<38}"
              f"{_rate(args.steps * args.batch_size, total)}"
              f"  -> {share:.1f}% of the time in the model")


if __name__ == "__main__":
    main()
