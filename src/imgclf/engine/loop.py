"""The one training loop. Methods differ in the module trained and the data fed to it.

``fit`` trains a module (a whole classifier, or only its head over cached features) for
up to ``epochs``, validating after each, with early stopping and best/last checkpoints
deciding by the same ``Monitor``. It is ready for several processes: the loaders shard,
metrics are gathered across ranks, and only rank 0 writes.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from imgclf.config import INFERENCE_BATCH
from imgclf.data.datasets import ArrayDataset, make_loader
from imgclf.data.transforms import tta_average
from imgclf.engine import dist
from imgclf.engine.checkpoints import load_checkpoint, save_atomic
from imgclf.engine.runtime import Runtime
from imgclf.errors import Diverged, Interrupted
from imgclf.history import Monitor
from imgclf.paths import BEST_CHECKPOINT, HISTORY_FILE, LAST_CHECKPOINT, open_for_writing

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                  "phase")


@dataclass
class Phase:
    """One stretch of training: what trains, on which data, with which optimiser."""

    name: str
    module: nn.Module
    train_loader: object
    val_loader: object | None
    optimizer: torch.optim.Optimizer
    epochs: int
    loss_fn: nn.Module
    scheduler: object | None = None
    scheduler_per_step: bool = False
    mixer: Callable | None = None
    before_epoch: Callable[[], None] | None = None
    runtime: Runtime | None = None
    """Overrides the run's runtime (a head over cached features needs no autocast)."""
    lr_option: str = "--lr"
    """The options that set this phase's learning rates, for the advice when it diverges."""


@dataclass
class FitState:
    """What a resumed run needs besides the weights."""

    history: list[dict] = field(default_factory=list)
    phase: str = ""
    epoch: int = 0
    done: bool = False
    """Whether ``phase`` ran to its end (all epochs, or stopped early)."""
    seconds: float = 0.0
    """Training time of earlier sessions, up to the checkpoint this one resumed from."""
    trainable: int | None = None
    """Parameters that ``phase`` trains (a resumed run may not set the phase up again)."""
    features_by: str | None = None
    """What computed the frozen features a head trained on, if it did: 'onnx' (ONNX
    Runtime, which then evaluates that head's run too) or 'torch'."""
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Training time so far, earlier sessions included."""
        return self.seconds + time.perf_counter() - self.started


def _progress(loader, desc: str):
    """A progress bar over ``loader`` on a terminal, unless the log is quiet (``-q``)."""
    if dist.is_main() and sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
        return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    return loader


def train_one_epoch(phase: Phase, rt: Runtime, desc: str) -> dict[str, float]:
    """One pass over the training data; returns mean loss and accuracy over all ranks."""
    module = phase.module
    module.train()
    if phase.before_epoch is not None:
        phase.before_epoch()
    totals = torch.zeros(3, dtype=torch.float64)
    bar = _progress(phase.train_loader, desc)
    # Shards may differ by one batch; Join lets ranks that finish early shadow the others'
    # gradient all-reduces instead of hanging.
    joined = Join([module]) if isinstance(module, DistributedDataParallel) else nullcontext()
    with joined:
        for x, y in bar:
            _train_step(phase, rt, x, y, totals)
            if bar is not phase.train_loader:
                bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}")
    if dist.is_distributed():
        torch.distributed.all_reduce(totals)
    return {"loss": float(totals[0] / totals[2]), "accuracy": float(totals[1] / totals[2])}


def _train_step(phase: Phase, rt: Runtime, x, y, totals: torch.Tensor) -> None:
    """Forward, backward and optimiser step on one batch; adds to (loss sum, correct, n)."""
    module = phase.module
    x, y = rt.to_input(x), y.to(rt.device, non_blocking=True)
    target = y
    if phase.mixer is not None:
        x, target = phase.mixer(x, y)
    with rt.autocast():
        logits = module(x)
    loss = phase.loss_fn(logits.float(), target)
    if not torch.isfinite(loss):
        raise Diverged(f"the training loss became {loss.item()}")
    phase.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    phase.optimizer.step()
    if phase.scheduler is not None and phase.scheduler_per_step:
        phase.scheduler.step()
    n = y.shape[0]
    totals += torch.tensor([loss.item() * n, (logits.argmax(1) == y).sum().item(), n],
                           dtype=torch.float64)


@torch.inference_mode()
def run_inference(module: nn.Module, loader, rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """Outputs (float32) and labels for every sample of ``loader``, gathered across ranks."""
    module.eval()
    outputs, labels = [], []
    for x, y in loader:
        with rt.autocast():
            logits = module(rt.to_input(x))
        outputs.append(logits.float().cpu())
        labels.append(y.cpu())
    logits = torch.cat(outputs) if outputs else torch.zeros(0)
    labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if dist.is_distributed():
        logits, labels = _gather_in_order(logits, labels, loader)
    return logits.numpy(), labels.numpy()


def predict_array(model: torch.nn.Module, images: np.ndarray, rt: Runtime,
                  batch_size: int = INFERENCE_BATCH,
                  tta: bool = False) -> tuple[np.ndarray, float]:
    """Class probabilities for uint8 images (N, H, W, 3), and images per second; ``tta``
    averages them with the mirrored images' (as ``imgclf predict --tta``)."""
    def probs_of(view: np.ndarray) -> np.ndarray:
        loader = make_loader(ArrayDataset(view, np.zeros(len(view), dtype=np.int64)),
                             batch_size, shuffle=False, workers=0)
        logits, _ = run_inference(model, loader, rt)
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    tic = time.perf_counter()
    probs = tta_average(probs_of, images, tta)
    seconds = time.perf_counter() - tic
    return probs, len(images) / max(seconds, 1e-9)


def _gather_in_order(logits, labels, loader):
    """Gather rank shards and put rows back into dataset order."""
    index = torch.as_tensor(list(loader.sampler), dtype=torch.long)
    all_index = dist.gather_cat(index)
    all_logits, all_labels = dist.gather_cat(logits), dist.gather_cat(labels)
    order = torch.argsort(all_index)
    return all_logits[order], all_labels[order]


def evaluate(module: nn.Module, loader, rt: Runtime) -> dict[str, float]:
    """Validation loss (plain cross-entropy) and accuracy. Raises Diverged when the outputs
    are not finite: weights grown huge but still finite overflow there."""
    logits, labels = run_inference(module, loader, rt)
    if len(labels) == 0:
        return {"val_loss": math.nan, "val_accuracy": math.nan}
    if not np.isfinite(logits).all():
        raise Diverged("the outputs on the validation images stopped being finite numbers")
    t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels)
    return {
        "val_loss": float(F.cross_entropy(t_logits, t_labels)),
        "val_accuracy": float((t_logits.argmax(1) == t_labels).float().mean()),
    }


def rng_state(loader) -> dict:
    """The random states the rest of training draws from: PyTorch's (dropout noise,
    augmentation) and the loader's shuffling generator."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # a GPU run's (a CPU run starts no CUDA context for it)
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(loader, "generator", None)
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def restore_rng_state(state: dict | None, loader) -> None:
    """Undo to ``rng_state``'s snapshot (checkpoints from before it have none: a no-op)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # Resumed where fewer GPUs are visible, those there take their states.
        for device, gpu_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, device)
    generator = getattr(loader, "generator", None)
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def write_history(history: list[dict], path: Path) -> None:
    with open_for_writing(path, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def _run_epoch(phase: Phase, rt: Runtime, epoch: int, monitored: str) -> dict:
    """Train ``phase`` for epoch ``epoch`` (from 0), validate, and step a per-epoch
    schedule (a plateau one by the ``monitored`` metric); returns the epoch's history row
    but for its number in the run."""
    sampler = getattr(phase.train_loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    tic = time.perf_counter()
    lr = phase.optimizer.param_groups[-1]["lr"]  # the epoch's first step's, any schedule
    row = train_one_epoch(phase, rt, f"{phase.name} {epoch + 1}/{phase.epochs}")
    if not all(torch.isfinite(p).all() for p in phase.module.parameters()):
        raise Diverged("the weights stopped being finite numbers")
    if phase.val_loader is not None:
        row.update(evaluate(phase.module, phase.val_loader, rt))
    row.update(lr=lr, seconds=round(time.perf_counter() - tic, 3), phase=phase.name)
    if phase.scheduler is not None and not phase.scheduler_per_step:
        if isinstance(phase.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            phase.scheduler.step(row.get(monitored, row["loss"]))
        else:
            phase.scheduler.step()
    return row


def fit(
    phase: Phase,
    rt: Runtime,
    monitor: Monitor,
    run_dir: Path,
    model: nn.Module,
    meta: dict,
    state: FitState,
    restore_best: bool = True,
    epoch_logger: Callable[[dict], None] | None = None,
) -> FitState:
    """Train ``phase`` with early stopping; best.pt/last.pt/history.csv go to ``run_dir``.

    ``phase.module`` is ``model`` or a part of it (its head, over cached features); every
    checkpoint holds the whole ``model``'s weights plus ``meta`` (classes, preprocessing,
    model config), all plain data. ``last.pt`` is written as the phase starts and after
    each epoch, so it always holds a whole epoch's state; Ctrl-C raises ``Interrupted``
    and a resumed run trains on from there as an uninterrupted one would. Returns the
    updated state (history and position).
    """
    start = state.epoch if state.phase == phase.name else 0
    state.done = False
    if start:
        log.info("resuming phase %s at epoch %d", phase.name, start + 1)
    offset = sum(1 for row in state.history if row.get("phase") != phase.name)
    numbered = functools.partial(_epoch_name, phase.name, offset)
    # The random state as the last whole epoch left it (or as the phase began): a resumed
    # run starts the next epoch from it, so that it trains as an uninterrupted one would.
    rng = rng_state(phase.train_loader)

    last_saved = start  # this phase's epochs that last.pt holds

    def save(name: str, epoch: int) -> None:
        nonlocal last_saved
        if dist.is_main():
            save_atomic(_checkpoint(meta, model, phase, monitor, state, epoch, rng),
                        run_dir / name)
        if name == LAST_CHECKPOINT:
            last_saved = epoch

    if not start:
        save(LAST_CHECKPOINT, 0)  # what an interruption during the first epoch resumes from
    # Interrupted after last.pt was saved and before early stopping ended the phase, a
    # resumed phase ends where it would have.
    stopped = bool(start) and monitor.should_stop
    if stopped:
        _log_early_stop(monitor, numbered)
    try:
        for epoch in range(start, start if stopped else phase.epochs):
            row = {"epoch": offset + epoch + 1, **_run_epoch(phase, rt, epoch, monitor.monitor)}
            state.history.append(row)
            state.phase, state.epoch = phase.name, epoch + 1
            if dist.is_main():  # before last.pt: a run resumed from the one before rewrites it
                write_history(state.history, run_dir / HISTORY_FILE)
            rng = rng_state(phase.train_loader)
            improved = monitor.update(row["epoch"], row.get(monitor.monitor, math.nan))
            if improved:
                save(BEST_CHECKPOINT, epoch + 1)
            save(LAST_CHECKPOINT, epoch + 1)
            if dist.is_main() and epoch_logger is not None:
                epoch_logger(row)
            _log_epoch(row, epoch + 1, phase.epochs, improved)
            if dist.broadcast_flag(monitor.should_stop):
                _log_early_stop(monitor, numbered)
                break
    except Diverged as exc:
        where = numbered(offset + (state.epoch if state.phase == phase.name else 0) + 1)
        if not (restore_best and phase_best(run_dir, phase.name)):
            raise Diverged(f"training diverged in {where}: {exc}. Lower the learning rate "
                           f"({phase.lr_option}; this phase's was "
                           f"{phase.optimizer.defaults['lr']:g}) "
                           f"and train again, into another --out or after deleting {run_dir} "
                           "(resuming it would keep this rate).") from None
        log.warning("training diverged in %s: %s. Training stops there; the best epoch's "
                    "weights are kept (a lower learning rate, %s, may train further).",
                    where, exc, phase.lr_option)
    except KeyboardInterrupt:
        # The weights are part-way through an epoch (or its checkpoints): last.pt keeps
        # the last whole one.
        saved = ("its last whole epoch is saved" if offset + last_saved else
                 "no epoch had finished; its starting point is saved")
        if dist.is_main() and len(state.history) > offset + last_saved:
            # Stopped between an epoch's history row and its last.pt: history.csv lists
            # the epochs last.pt holds, which a resumed run goes on from.
            write_history(state.history[:offset + last_saved], run_dir / HISTORY_FILE)
        raise Interrupted(f"training interrupted; {saved} in {run_dir / LAST_CHECKPOINT}. "
                          f"{resume_advice(run_dir)}") from None
    state.done = True
    save(LAST_CHECKPOINT, state.epoch)
    dist.barrier()
    best = phase_best(run_dir, phase.name) if restore_best else None
    if best is not None:
        model.load_state_dict(best["model"])
        log.info("restored best weights (%s, %s %.4f)", numbered(monitor.best_epoch),
                 monitor.monitor, monitor.best)
    return state


def _epoch_name(phase: str, offset: int, run_epoch: int) -> str:
    """An epoch as the per-epoch log lines count it, within its phase (history.csv and the
    learning curves count across the run); ``offset`` epochs came in earlier phases."""
    if not offset:
        return f"epoch {run_epoch}"
    return f"{phase} epoch {run_epoch - offset}, epoch {run_epoch} of the run"


def _checkpoint(meta: dict, model: nn.Module, phase: Phase, monitor: Monitor,
                state: FitState, epoch: int, rng: dict) -> dict:
    """What best.pt and last.pt hold: ``meta``, the whole model's weights, and what a
    resumed run needs to train on as an uninterrupted one would."""
    return dict(
        meta, model=model.state_dict(), optimizer=phase.optimizer.state_dict(),
        scheduler=phase.scheduler.state_dict() if phase.scheduler is not None else None,
        monitor=monitor.state_dict(), history=state.history, phase=phase.name, epoch=epoch,
        phase_done=state.done, rng=rng, seconds=state.elapsed(), trainable=state.trainable,
        features_by=state.features_by,
    )


def resume_advice(run_dir: Path) -> str:
    """How to go on with the interrupted run in ``run_dir``, from the shell and Python."""
    return (f"Continue with `imgclf train --resume --out {shlex.quote(str(run_dir))}` (in "
            "Python: imgclf.train(out=RUN_DIR, resume=True)).")


def _log_early_stop(monitor: Monitor, numbered: Callable[[int], str]) -> None:
    log.info("early stopping: %s did not improve for %d epochs (best %.4f at %s)",
             monitor.monitor, monitor.patience, monitor.best, numbered(monitor.best_epoch))


def _log_epoch(row: dict, epoch: int, epochs: int, improved: bool) -> None:
    log.info("epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  %.1fs%s",
             epoch, epochs, row["loss"], row["accuracy"], row.get("val_loss", math.nan),
             row.get("val_accuracy", math.nan), row["seconds"], "  *" if improved else "")


def phase_best(run_dir: Path, phase: str) -> dict | None:
    """best.pt when it holds this phase's best epoch (an earlier phase's best is not one of
    this phase's weights)."""
    best = run_dir / BEST_CHECKPOINT
    checkpoint = load_checkpoint(best) if best.exists() else None
    return checkpoint if checkpoint is not None and checkpoint.get("phase") == phase else None
