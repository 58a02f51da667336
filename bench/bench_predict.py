"""Prediction throughput: ONNX Runtime vs PyTorch eager (fp32, channels_last, bf16 autocast).

    python bench/bench_predict.py                      # tf_efficientnet_lite0, 224 px, batch 32
    python bench/bench_predict.py --run runs/my_run    # a trained run instead

Each engine classifies the same fixed batch of random uint8 images (N, H, W, 3) through its
predictor's ``predict_arrays``, so the figures include the layout change and the softmax,
not file decoding. Without ``--run`` the model has random weights (speed does not depend on
them) and is exported to ONNX in a temporary folder. Prints images per second from the
median batch time (robust to other processes sharing the CPU) and from the fastest batch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgclf.config import build_config
from imgclf.engine.checkpoints import save_atomic
from imgclf.engine.runtime import Runtime, cpu_supports_bf16
from imgclf.engine.trainer import checkpoint_meta
from imgclf.export import OnnxPredictor, export_model
from imgclf.machine import available_cores
from imgclf.models.factory import create_model
from imgclf.predict import Predictor

TORCH_MODES = (("torch fp32", None, False), ("torch fp32 channels_last", None, True),
               ("torch bf16 autocast channels_last", torch.bfloat16, True))


def random_run(folder: Path, name: str, img_size: int) -> Path:
    """A run folder holding a randomly initialised ``name``, saved as the trainer does."""
    model, prep, _ = create_model(name, 6, img_size=img_size, pretrained=False)
    config = build_config("transfer", None, {"model": {"name": name, "img_size": img_size}})
    meta = checkpoint_meta(config, [f"class{i}" for i in range(6)], prep, "random")
    save_atomic(dict(meta, model=model.state_dict()), folder / "model.pt")
    return folder


def batch_times(predict, images: np.ndarray, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):  # oneDNN and ONNX Runtime pick kernels on the first calls
        predict(images)
    times = []
    for _ in range(iters):
        tic = time.perf_counter()
        predict(images)
        times.append(time.perf_counter() - tic)
    return times


def engines(torch_predictor: Predictor, onnx_file: Path, threads: int):
    """(label, predict_arrays) for each engine, set up only when the caller gets to it."""
    for label, amp, channels_last in TORCH_MODES:
        torch_predictor.rt = Runtime(torch.device("cpu"), amp, channels_last)
        torch_predictor.model.to(memory_format=torch.channels_last if channels_last
                                 else torch.contiguous_format)
        yield label, torch_predictor.predict_arrays
    yield "onnxruntime fp32 (CPU)", OnnxPredictor(onnx_file, threads=threads).predict_arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None,
                        help="trained run folder (default: random weights)")
    parser.add_argument("--model", default="tf_efficientnet_lite0",
                        help="model for the random-weight run (default tf_efficientnet_lite0)")
    parser.add_argument("--img-size", type=int, default=224,
                        help="input size for the random-weight run (default 224)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--iters", type=int, default=10, help="timed batches per engine")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both engines (default: the cores this process has)")
    args = parser.parse_args()
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or random_run(Path(tmp), args.model, args.img_size)
        # A run's own export if it has one; else one in the temporary folder, so that the
        # benchmark never writes into a run folder.
        onnx_file = run / "model.onnx"
        if not onnx_file.exists():
            onnx_file = export_model(run, "onnx", out=Path(tmp) / "model.onnx")
        predictor = Predictor(run, device="cpu")
        size = predictor.prep.img_size
        name = predictor.meta["model_config"]["name"]
        images = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3),
                                                   dtype=np.uint8)
        print(f"{name} {size}px, batch {args.batch}, {threads} threads, torch "
              f"{torch.__version__}, native bf16: {cpu_supports_bf16()}, "
              f"{args.warmup} warm-up + {args.iters} timed batches")
        print(f"{'engine':<36}{'ms/batch':>10}{'img/s':>9}{'best img/s':>12}")
        for label, predict in engines(predictor, onnx_file, threads):
            times = batch_times(predict, images, args.warmup, args.iters)
            median = statistics.median(times)
            print(f"{label:<36}{median * 1e3:>10.1f}{args.batch / median:>9.1f}"
                  f"{args.batch / min(times):>12.1f}", flush=True)


if __name__ == "__main__":
    main()
