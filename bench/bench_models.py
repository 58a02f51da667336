"""Training and inference speed per model: fp32 vs channels_last vs bf16 autocast.

    python bench/bench_models.py --models small_cnn,small_cnn_wide,tf_efficientnet_lite0
    python bench/bench_models.py --device cuda --compile   # on a GPU, with torch.compile too

Random weights and random uint8 images: speed does not depend on either. Prints images
per second for a training step (forward, backward, Adam step, fused as ``imgclf train``
runs it) and for inference.
``--compile`` adds bf16 channels_last through ``torch.compile`` (as ``imgclf train
--compile``); its one-off compile time is printed apart and left out of the rates.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from imgclf.engine.runtime import Runtime, reuse_freed_memory
from imgclf.engine.trainer import make_optimizer
from imgclf.models.factory import create_model


def _time(fn, seconds: float, sync) -> float:
    fn()  # warm-up (oneDNN picks kernels, torch.compile compiles, on the first calls)
    fn()
    sync()
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        fn()
        count += 1
        if count % 10 == 0:
            sync()
    sync()
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


MODES = (("fp32", None, False, False), ("fp32 channels_last", None, True, False),
         ("bf16 channels_last", torch.bfloat16, True, False))
COMPILED = ("bf16 channels_last compiled", torch.bfloat16, True, True)


def bench(name: str, batch: int, seconds: float, img_size: int | None, train: bool,
          device: torch.device, modes=MODES):
    model, prep, _ = create_model(name, 6, img_size=img_size, pretrained=False)
    model = model.to(device)
    x8 = torch.randint(0, 256, (batch, 3, prep.img_size, prep.img_size), dtype=torch.uint8)
    y = torch.randint(0, 6, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for label, amp, cl, compiled in modes:
        rt = Runtime(device, amp, cl)
        m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        x = rt.to_input(x8)
        opt = make_optimizer(m.parameters(), "adam", 1e-4, 0.0)  # fused, as imgclf trains
        if compiled:
            m = torch.compile(m)
            tic = time.perf_counter()
            if train:
                _train_step(m, rt, x, y, opt)
            _infer(m, rt, x)
            sync()
            print(f"  ({name}: torch.compile took {time.perf_counter() - tic:.1f} s)")

        step = functools.partial(_train_step, m, rt, x, y, opt)
        infer = functools.partial(_infer, m, rt, x)
        train_ips = batch * _time(step, seconds, sync) if train else float("nan")
        infer_ips = batch * _time(infer, seconds, sync)
        rows.append((name, prep.img_size, label, train_ips, infer_ips))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small_cnn,small_cnn_wide,tf_efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--compile", action="store_true",
                        help="also bf16 channels_last through torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    reuse_freed_memory()  # as imgclf's CPU runtime does
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, batch {args.batch}")
    print(f"{'model':<24}{'size':>5}  {'mode':<29}{'train img/s':>12}{'infer img/s':>12}")
    modes = MODES + (COMPILED,) if args.compile else MODES
    for name in args.models.split(","):
        for row in bench(name, args.batch, args.seconds, args.img_size, not args.no_train,
                         device, modes):
            print(f"{row[0]:<24}{row[1]:>5}  {row[2]:<29}{row[3]:>12.1f}{row[4]:>12.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
