"""The reference study's Keras pipeline against imgclf's, in one run on one machine.

    .venv/bin/python bench/bench_reference.py --setup        # once: makes bench/.venv-tf
    .venv/bin/python bench/bench_reference.py --data /work/shared/datasets/intel-scenes \
        --epochs 3 --methods scratch,augment

For each method both sides train on the same dataset for exactly ``--epochs`` epochs (no
early stopping) and are evaluated on its test split:

- Keras: ``bench/reference_keras.py``, the study's notebook (PIL into numpy arrays,
  Sequential CNN, ``ImageDataGenerator.flow`` for augment), run with the python of a
  separate virtual environment holding TensorFlow's CPU build, so that TensorFlow never
  enters imgclf's environment. ``--setup`` creates it and installs ``TF_REQUIREMENTS``.
- imgclf: ``imgclf train DATA --method M --epochs E --patience 0 --no-restore-best
  --tta off`` (patience 0 never stops early; the last epoch's weights are evaluated on
  the plain test images, as Keras evaluates them), with ``IMGCLF_CACHE_DIR`` set to an
  empty folder, so that decoding every JPEG is counted ("cold"). ``--warm`` adds a second
  run that reuses that cache.

Both validate on a stratified 20% of train after every epoch, inside the epoch's time.
Total seconds are each subprocess's wall time: interpreter start, imports, loading,
training, evaluation (and, for imgclf, its plots and checkpoints). The ratio columns are
Keras' seconds over imgclf's: above 1, imgclf is faster. Each process uses every core it
sees; run it on a quiet machine, and the load average printed first tells whether it was.
Raw numbers go to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
KERAS_SCRIPT = BENCH_DIR / "reference_keras.py"
DEFAULT_TF_VENV = BENCH_DIR / ".venv-tf"
# What the Keras side needs, pinned to what `pip install tensorflow-cpu` gave for Python
# 3.11 when this benchmark was written: scipy runs ImageDataGenerator's affine warps,
# scikit-learn the notebook's train_test_split.
TF_REQUIREMENTS = ("tensorflow-cpu==2.21.0", "scipy==1.17.1", "pillow==13.0.0",
                   "scikit-learn==1.9.1")
METHODS = ("scratch", "augment")


@dataclass
class Result:
    """One side's run of one method."""

    method: str
    framework: str
    epoch_seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    test_accuracy: float | None = None
    error: str | None = None
    detail: dict = field(default_factory=dict)

    @property
    def mean_epoch(self) -> float | None:
        if not self.epoch_seconds:
            return None
        return sum(self.epoch_seconds) / len(self.epoch_seconds)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def setup_tf_venv(venv: Path) -> None:
    """Create ``venv`` (if missing) and install ``TF_REQUIREMENTS`` into it."""
    if not venv_python(venv).exists():
        print(f"creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv_python(venv))
    subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *TF_REQUIREMENTS], check=True)
    subprocess.run([python, "-c", "import tensorflow as tf; print('tensorflow', tf.__version__)"],
                   check=True, env=keras_env())


def keras_env() -> dict[str, str]:
    # Hides TensorFlow's start-up info lines (oneDNN, CPU features); changes no computation.
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def imgclf_versions(python: str) -> dict:
    """imgclf's and torch's versions as ``python`` imports them; exits when it cannot."""
    code = ("import json, imgclf, torch; print(json.dumps({'imgclf': imgclf.__version__, "
            "'torch': torch.__version__, 'torch_threads': torch.get_num_threads()}))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: {python} cannot import imgclf and torch; run this script "
                         "with imgclf's interpreter (.venv/bin/python) or pass "
                         f"--imgclf-python.\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def machine_info() -> dict:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def timed_run(cmd: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Run ``cmd`` with its output on this terminal; its exit code and wall seconds."""
    print("$", shlex.join(cmd), flush=True)
    tic = time.perf_counter()
    done = subprocess.run(cmd, env=env)
    return done.returncode, time.perf_counter() - tic


def run_keras(python: Path, data: Path, method: str, epochs: int, seed: int,
              out: Path) -> Result:
    json_out = out / f"keras-{method}.json"
    cmd = [str(python), str(KERAS_SCRIPT), "--data", str(data), "--method", method,
           "--epochs", str(epochs), "--patience", "0", "--seed", str(seed),
           "--json-out", str(json_out)]
    code, wall = timed_run(cmd, keras_env())
    result = Result(method, "keras", wall_seconds=wall)
    if code or not json_out.exists():
        result.error = f"exit code {code}"
        return result
    detail = json.loads(json_out.read_text())
    result.epoch_seconds = detail["epoch_seconds"]
    result.test_accuracy = detail["test_accuracy"]
    result.detail = detail
    return result


def run_imgclf(python: str, data: Path, method: str, epochs: int, seed: int, run_dir: Path,
               cache_dir: Path, label: str, extra: list[str]) -> Result:
    cmd = [python, "-m", "imgclf", "train", str(data), "--method", method,
           "--epochs", str(epochs), "--patience", "0", "--no-restore-best", "--tta", "off",
           "--seed", str(seed), "--out", str(run_dir), *extra]
    code, wall = timed_run(cmd, dict(os.environ, IMGCLF_CACHE_DIR=str(cache_dir)))
    result = Result(method, label, wall_seconds=wall)
    if code:
        result.error = f"exit code {code}"
        return result
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "history.csv", newline="") as fh:
        result.epoch_seconds = [float(row["seconds"]) for row in csv.DictReader(fh)]
    result.test_accuracy = metrics["accuracy"]
    result.detail = {"split": metrics.get("split"), "train_seconds": metrics.get("train_seconds"),
                     "run_dir": str(run_dir)}
    if metrics.get("split") != "test":
        result.error = f"evaluated on {metrics.get('split')}, not test"
    return result


def _number(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_table(results: list[Result]) -> str:
    """One row per run; imgclf rows carry Keras' seconds over theirs (same method)."""
    keras = {r.method: r for r in results if r.framework == "keras"}
    head = (f"{'method':<9}{'framework':<15}{'epochs':>7}{'s/epoch':>9}{'total s':>9}"
            f"{'test acc':>10}{'keras/imgclf per epoch':>24}{'total':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        k = keras.get(r.method)
        per_epoch = total = None
        if k is not None and r is not k and not k.error and not r.error:
            per_epoch = k.mean_epoch / r.mean_epoch if r.mean_epoch else None
            total = k.wall_seconds / r.wall_seconds
        acc = _number(r.test_accuracy * 100 if r.test_accuracy is not None else None,
                      ".1f", "%")
        lines.append(
            f"{r.method:<9}{r.framework:<15}{len(r.epoch_seconds):>7}"
            f"{_number(r.mean_epoch, '.1f'):>9}{r.wall_seconds:>9.1f}{acc:>10}"
            f"{_number(per_epoch, '.2f', 'x'):>24}{_number(total, '.2f', 'x'):>8}"
            + (f"  ({r.error})" if r.error else ""))
    lines.append("")
    for r in results:
        epochs = ", ".join(f"{s:.1f}" for s in r.epoch_seconds) or "-"
        lines.append(f"{r.method} / {r.framework}: seconds per epoch {epochs}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Run with imgclf's interpreter: .venv/bin/python bench/bench_reference.py ...")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset with train/ and test/ class folders (or Kaggle's "
                             "seg_train/seg_train, seg_test/seg_test)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs each side runs, exactly: no early stopping (default 3)")
    parser.add_argument("--methods", default="scratch,augment",
                        help=f"comma-separated, from {', '.join(METHODS)} (default both)")
    parser.add_argument("--setup", action="store_true",
                        help=f"create the TensorFlow venv if missing and install "
                             f"{' '.join(TF_REQUIREMENTS)} into it; without --data, only that")
    parser.add_argument("--tf-venv", type=Path, default=DEFAULT_TF_VENV,
                        help="TensorFlow's virtual environment (default bench/.venv-tf)")
    parser.add_argument("--imgclf-python", default=sys.executable,
                        help="interpreter that has imgclf installed (default: this one)")
    parser.add_argument("--imgclf-args", default="",
                        help="extra arguments for every imgclf train call, as one string, "
                             "e.g. --imgclf-args='--amp off' for fp32 like Keras")
    parser.add_argument("--warm", action="store_true",
                        help="also time imgclf a second time with its decoded-image cache "
                             "already filled")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed for both sides' split, initialisation, shuffling "
                             "(default 42)")
    parser.add_argument("--out", type=Path, default=None,
                        help="new folder for the run folders, Keras' JSON and results.json "
                             "(default: a new temporary folder)")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        parser.error(f"--methods takes {', '.join(METHODS)}; got {','.join(unknown) or 'none'}")
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.data is None and not args.setup:
        parser.error("--data is required (or --setup alone to create the TensorFlow venv)")
    if args.data is not None and not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.setup:
        setup_tf_venv(args.tf_venv)
        if args.data is None:
            return
    tf_python = venv_python(args.tf_venv)
    if not tf_python.exists():
        raise SystemExit(f"error: {args.tf_venv} has no python; run this script once with "
                         f"--setup --tf-venv {args.tf_venv} to create it.")
    versions = imgclf_versions(args.imgclf_python)
    machine = machine_info()
    out = args.out or Path(tempfile.mkdtemp(prefix="imgclf-vs-keras-"))
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise SystemExit(f"error: --out {out} is not empty; give a new folder.")
    print(f"{machine['cpu']}, {machine['cores']} cores, load average "
          f"{' '.join(map(str, machine['load_average']))}; imgclf {versions['imgclf']}, "
          f"torch {versions['torch']}; output in {out}", flush=True)
    extra = shlex.split(args.imgclf_args)
    results = []
    for method in args.methods:
        results.append(run_keras(tf_python, args.data, method, args.epochs, args.seed, out))
        # Empty, so that the first imgclf run decodes every image; removed afterwards, as
        # it holds every decoded image.
        cache = Path(tempfile.mkdtemp(prefix=f"cache-{method}-", dir=out))
        results.append(run_imgclf(args.imgclf_python, args.data, method, args.epochs,
                                  args.seed, out / f"imgclf-{method}", cache, "imgclf cold",
                                  extra))
        if args.warm:
            results.append(run_imgclf(args.imgclf_python, args.data, method, args.epochs,
                                      args.seed, out / f"imgclf-{method}-warm", cache,
                                      "imgclf warm", extra))
        shutil.rmtree(cache)
    summary = {"machine": machine, "versions": versions, "epochs": args.epochs,
               "data": str(args.data), "imgclf_args": extra,
               "results": [dict(asdict(r), mean_epoch=r.mean_epoch) for r in results]}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(format_table(results))
    tf_versions = next((r.detail for r in results if r.framework == "keras" and r.detail), None)
    if tf_versions:
        print(f"keras: TensorFlow {tf_versions['tensorflow']}, Keras {tf_versions['keras']} "
              f"({args.tf_venv}); imgclf: {versions['imgclf']}, torch {versions['torch']}")
    print(f"\nraw numbers: {out / 'results.json'}")


if __name__ == "__main__":
    main()
