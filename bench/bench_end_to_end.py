"""End to end on a real dataset: wall time and test accuracy of each method.

    python bench/bench_end_to_end.py --data ../shared/datasets/intel-scenes \
        --runs scratch,augment,transfer,finetune --out /tmp/e2e

Each run is a separate ``imgclf train`` process with its own empty cache folder, so the
wall time includes decoding every JPEG and (for transfer) extracting frozen features.
Extra arguments after ``--`` go to every ``imgclf train`` call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = {
    "scratch": ["--method", "scratch"],
    "augment": ["--method", "augment"],
    "augment-small_cnn": ["--method", "augment", "--model", "small_cnn"],
    "transfer": ["--method", "transfer"],
    "transfer-fp32": ["--method", "transfer", "--amp", "off"],
    "finetune": ["--method", "transfer", "--finetune", "2", "--augment", "flip"],
}


def run(name: str, data: str, out: Path, cache: Path, extra: list[str]) -> tuple:
    """Train one preset with ``cache`` as its cache folder; (name, wall, accuracy, epochs,
    split, whether the test-time mirror was used)."""
    run_dir = out / name
    cmd = [sys.executable, "-m", "imgclf", "train", data, "--out", str(run_dir),
           *RUNS[name], *extra]
    print("$", " ".join(cmd), flush=True)
    tic = time.perf_counter()
    done = subprocess.run(cmd, env=dict(os.environ, IMGCLF_CACHE_DIR=str(cache)))
    wall = time.perf_counter() - tic
    if done.returncode:
        return name, wall, None, None, "failed", None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    epochs = len((run_dir / "history.csv").read_text().splitlines()) - 1
    return name, wall, metrics["accuracy"], epochs, metrics["split"], metrics.get("tta")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", default="scratch,augment,transfer,finetune",
                        help=f"comma-separated, from {', '.join(RUNS)}")
    parser.add_argument("--out", default=None, help="folder for the run folders (default temp)")
    parser.add_argument("--warm", action="store_true",
                        help="share one cache folder across runs (decode once)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out = Path(args.out or tempfile.mkdtemp(prefix="imgclf-e2e-"))
    # Cache folders hold every decoded image (GBs at 224 px): removed when done.
    with tempfile.TemporaryDirectory(prefix="imgclf-cache-") as caches:
        rows = [run(name, args.data, out, Path(caches) / ("shared" if args.warm else name),
                    extra) for name in args.runs.split(",")]
    print(f"\n{'run':<20}{'wall s':>9}{'epochs':>8}{'accuracy':>10}  split  mirror TTA")
    for name, wall, acc, epochs, split, tta in rows:
        acc_text = f"{acc:.2%}" if acc is not None else "-"
        tta_text = "-" if tta is None else ("yes" if tta else "no")
        print(f"{name:<20}{wall:>9.1f}{epochs or '-':>8}{acc_text:>10}  {split:<5}  {tta_text}")


if __name__ == "__main__":
    main()
