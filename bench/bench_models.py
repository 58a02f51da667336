"""Training and inference speed per model: fp32 vs channels_last vs bf16 autocast.

    python bench/bench_models.py --models small_cnn,small_cnn_wide,tf_efficientnet_lite0

Random weights and random uint8 images: speed does not depend on either. Prints images
per second for a training step (forward, backward, Adam step) and for inference.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from imgclf.engine.runtime import Runtime, reuse_freed_memory
from imgclf.models.factory import create_model


def _time(fn, seconds: float) -> float:
    fn()  # warm-up (oneDNN picks kernels on the first call)
    fn()
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - tic)


def _train_step(m, rt, x, y, opt) -> None:
    m.train()
    with rt.autocast():
        loss = torch.nn.functional.cross_entropy(m(x).float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


@torch.inference_mode()
def _infer(m, rt, x) -> None:
    m.eval()
    with rt.autocast():
        m(x)


def bench(name: str, batch: int, seconds: float, img_size: int | None, train: bool):
    model, prep, _ = create_model(name, 6, img_size=img_size, pretrained=False)
    x8 = torch.randint(0, 256, (batch, 3, prep.img_size, prep.img_size), dtype=torch.uint8)
    y = torch.randint(0, 6, (batch,))
    rows = []
    for label, amp, cl in (("fp32", None, False), ("fp32 channels_last", None, True),
                           ("bf16 channels_last", torch.bfloat16, True)):
        rt = Runtime(torch.device("cpu"), amp, cl)
        m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        x = rt.to_input(x8)
        opt = torch.optim.Adam(m.parameters(), 1e-4)

        step = functools.partial(_train_step, m, rt, x, y, opt)
        infer = functools.partial(_infer, m, rt, x)
        train_ips = batch * _time(step, seconds) if train else float("nan")
        infer_ips = batch * _time(infer, seconds)
        rows.append((name, prep.img_size, label, train_ips, infer_ips))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small_cnn,small_cnn_wide,tf_efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--no-train", action="store_true", help="inference only")
    args = parser.parse_args()
    reuse_freed_memory()  # as imgclf's CPU runtime does
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'model':<24}{'size':>5}  {'mode':<20}{'train img/s':>12}{'infer img/s':>12}")
    for name in args.models.split(","):
        for row in bench(name, args.batch, args.seconds, args.img_size, not args.no_train):
            print(f"{row[0]:<24}{row[1]:>5}  {row[2]:<20}{row[3]:>12.1f}{row[4]:>12.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
