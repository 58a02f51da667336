"""Turning a Config into a trained run folder: data, model, phases of the one loop, results.

Methods plug into the same loop:
- ``scratch`` / ``augment``: the whole classifier trains on (augmented) images;
- ``transfer``: the backbone is frozen and only the head trains. Without augmentation
  the frozen backbone's features are computed once, cached on disk, and the head trains
  on them in seconds; with augmentation every epoch runs the frozen backbone on fresh
  augmented views (features of random views cannot be reused, and caching a fixed few
  views would quietly cap the augmentation);
- ``--finetune N|all`` then unfreezes the backbone's last N stages and trains them with
  the head at lower learning rates, after the head has warmed up (fastai's fine_tune).
  The warm-up always trains on cached features; augmentation applies to fine-tuning.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from imgclf.config import (
    INFERENCE_BATCH,
    PATH_SETTINGS,
    Config,
    DataSection,
    ModelSection,
    changes_text,
    flat_settings,
)
from imgclf.data.cache import load_cached_array
from imgclf.data.datasets import ArrayDataset, make_loader
from imgclf.data.prepare import (
    PreparedData,
    copies_of_training_images,
    decode_split,
    prepare_run_data,
    write_skipped,
)
from imgclf.data.transforms import create_batch_mixer, create_transform
from imgclf.engine import dist
from imgclf.engine.checkpoints import (
    CHECKPOINT_FORMAT,
    NotACheckpoint,
    load_checkpoint,
    save_atomic,
)
from imgclf.engine.loop import (
    FitState,
    Phase,
    fit,
    phase_best,
    restore_rng_state,
    resume_advice,
    run_inference,
)
from imgclf.engine.runtime import Runtime, resolve_runtime
from imgclf.errors import ConfigError, Interrupted, RunError
from imgclf.evaluation import choose_tta, write_evaluation
from imgclf.history import Monitor, best_epoch
from imgclf.models.factory import (
    Classifier,
    Preprocessing,
    backbone_groups,
    count_parameters,
    create_model,
    freeze_norm_stats,
    model_from_checkpoint,
    set_trainable,
)
from imgclf.models.onnx import OnnxModule, onnxruntime_available
from imgclf.models.registry import check_model_name, get_spec
from imgclf.models.weights import adaptation
from imgclf.paths import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    MODEL_FILE,
    SKIPPED_FILE,
    cache_dir,
    cache_writable,
    check_output_folder,
    check_outside_other_runs,
    first_line,
    run_folder_lock,
    written_whole,
)

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(groups, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimiser, fused: one kernel per step instead of a dozen per parameter, which
    matters on CPU, where Adam's element-wise updates of a 19M-weight dense layer would
    otherwise cost as much as its forward pass."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True,
                               weight_decay=weight_decay, fused=True)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, weight_decay=weight_decay, fused=True)


def make_scheduler(optimizer, name: str, epochs: int, steps_per_epoch: int, mode: str):
    """(scheduler or None, whether it steps per batch)."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs), False
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        # At least two steps: over one, PyTorch's one-cycle gives that step its final rate,
        # next to zero, and a phase of a single batch would train nothing.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=max(2, epochs * max(1, steps_per_epoch))
        ), True
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.2,
                                                          patience=1), False
    return None, False


def make_loss(config: Config, labels: np.ndarray, classes: list[str], device) -> nn.Module:
    weight = None
    if config.train.class_weight == "auto":
        present = np.unique(labels)
        w = compute_class_weight("balanced", classes=present, y=labels)
        full = np.ones(len(classes), dtype=np.float32)
        full[present] = w
        weight = torch.tensor(full, device=device)
        log.info("class weights: %s",
                 ", ".join(f"{name}={value:.3g}" for name, value in zip(classes, full,
                                                                         strict=True)))
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.train.label_smoothing)


class FeatureExtractor(nn.Module):
    """A classifier's body alone, so the inference loop can collect features."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


class HeadOverFeatures(nn.Module):
    """A classifier's head over ``features``, a module that computes its frozen body's
    features (``_feature_module``): the classifier as a head trained on those features
    learnt it, and as such a run is evaluated."""

    def __init__(self, features: nn.Module, head: nn.Module):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def feature_engine(config: Config, rt: Runtime) -> str:
    """What computes the frozen body's features: 'onnx' (ONNX Runtime) or 'torch'."""
    choice = config.train.feature_engine
    if choice == "onnx" and rt.device.type != "cpu":
        raise ConfigError(f"train.feature_engine onnx runs ONNX Runtime on the CPU, and this "
                          f"run trains on {rt.device.type}; use --feature-engine torch or auto.")
    if choice == "auto":
        return "onnx" if rt.device.type == "cpu" and onnxruntime_available() else "torch"
    return choice


def _feature_module(model: Classifier, img_size: int, engine: str, required: bool) -> nn.Module:
    """The frozen body as the inference loop runs it. An ONNX export that fails, or whose
    outputs are not PyTorch's, is an error when ``required`` and otherwise falls back to
    PyTorch with a warning."""
    body = FeatureExtractor(model)
    if engine == "torch":
        return body
    try:
        return OnnxModule(body, img_size, threads=torch.get_num_threads())
    except Exception as exc:  # the exporter's errors have no common type
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if required:
            raise RunError(f"ONNX Runtime cannot compute this backbone's features ({reason}); "
                           "use --feature-engine torch.") from None
        log.warning("ONNX Runtime cannot compute this backbone's features (%s); PyTorch "
                    "computes them.", reason)
        return body


def _runtime_for(module: nn.Module, rt: Runtime) -> Runtime:
    """The runtime that feeds ``module``: ONNX Runtime takes plain float32 (NCHW) tensors,
    without autocast or channels_last."""
    return rt.plain() if isinstance(module, OnnxModule) else rt


def cached_features(body: Callable[[], nn.Module], images: np.ndarray, labels: np.ndarray,
                    key_of: Callable[[str], str], engine: str, required: bool, rt: Runtime,
                    batch_size: int, use_cache: bool, width: int) -> tuple[np.ndarray, str]:
    """The frozen body's features for ``images`` (``width`` values each), computed once per
    (model, data, engine) and kept under ``key_of(engine)``, and the engine that computed
    them.

    ``body()`` gives the module that computes them (``_feature_module``), only on a cache
    miss; it may be PyTorch's even for ``engine`` 'onnx', and the features are kept under
    the engine that computed them. Unless ``required``, 'onnx' also takes PyTorch's kept
    features, so a backbone ONNX Runtime cannot run is still computed once.
    """
    folder = cache_dir("features")
    engines = (engine,) if required or engine == "torch" else (engine, "torch")
    for name in engines:
        path = folder / f"{key_of(name)}.npy"
        if use_cache and path.exists():
            kept = load_cached_array(path, (len(images), width))
            if kept is not None:
                log.info("frozen-backbone features: cache hit (%s)", path.name)
                return kept, name
    tic = time.perf_counter()
    # Computing them leaves the random state as a cache hit does (the ONNX export draws
    # from it): the same seed then trains the head alike either way.
    with torch.random.fork_rng(devices=[]):
        module = body()
        loader = make_loader(ArrayDataset(images, labels), batch_size, shuffle=False, workers=0)
        features, _ = run_inference(module, loader, _runtime_for(module, rt))
    used = "onnx" if isinstance(module, OnnxModule) else "torch"
    engine_name = "ONNX Runtime" if used == "onnx" else "PyTorch"
    seconds = max(time.perf_counter() - tic, 1e-9)
    log.info("frozen-backbone features for %d images in %.1fs (%.0f images/s, %s)",
             len(images), seconds, len(images) / seconds, engine_name)
    path = folder / f"{key_of(used)}.npy"
    if use_cache and dist.is_main() and cache_writable(folder):
        with written_whole(path) as tmp:
            np.save(tmp, features)
    return features, used


def feature_key(image_key: str, config: Config, prep: Preprocessing, source: str,
                rt: Runtime, engine: str) -> str:
    """The features' cache key: the images, the backbone and its weights, the
    preprocessing, and what computed them (PyTorch at the run's precision, or ONNX Runtime)."""
    # A randomly initialised backbone is only the same backbone under the same seed.
    init = config.seed if source == "random init" else None
    precision = "onnx float32" if engine == "onnx" else str(rt.amp_dtype)
    ident = json.dumps([image_key, config.model.name, source, init, prep.to_dict(),
                        precision], sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def default_run_dir(config: Config) -> Path:
    base = Path("runs") / f"{config.method}-{config.model.name}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


@dataclass
class TrainingContext:
    """Everything the phases share."""

    config: Config
    data: PreparedData
    model: Classifier
    prep: Preprocessing
    rt: Runtime
    run_dir: Path
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    image_keys: dict[str, str]
    meta: dict
    features_by: str | None = None
    """The engine that computed the features the head trained on, once it has."""

    @functools.cached_property
    def loss_fn(self) -> nn.Module:
        """The phases' loss (``make_loss``), made once."""
        return make_loss(self.config, self.arrays["train"][1], self.data.classes,
                         self.rt.device)

    @functools.cached_property
    def feature_module(self) -> nn.Module:
        """The frozen body as the features are computed (``_feature_module``), made once."""
        cfg = self.config
        return _feature_module(self.model, self.prep.img_size, feature_engine(cfg, self.rt),
                               cfg.train.feature_engine == "onnx")


def checkpoint_meta(config: Config, classes: list[str], prep: Preprocessing, source: str,
                    data: dict | None = None) -> dict:
    """What every checkpoint and model.pt carry besides weights; ``data`` is the training
    data's ``PreparedData.contents()``, which a resumed run checks."""
    return {
        "format": CHECKPOINT_FORMAT,
        "classes": list(classes),
        "preprocessing": prep.to_dict(),
        "model_config": {"name": config.model.name, "head": config.model.head,
                         "dropout": config.model.dropout, "num_classes": len(classes),
                         "adapt": adaptation(config.model.name, source)},
        "method": config.method,
        "training": {"optimizer": config.train.optimizer, "schedule": config.train.schedule},
        "settings": flat_settings(config.to_dict()),  # checked on resume (_check_unchanged)
        "weights_source": source,
        "data": data,
    }


def _image_loader(ctx: TrainingContext, split: str, train: bool, preset: str):
    images, labels = ctx.arrays[split]
    transform = create_transform(preset, (ctx.prep.img_size, ctx.prep.img_size)) if train \
        else None
    ds = ArrayDataset(images, labels, transform=transform)
    return make_loader(ds, ctx.config.train.batch_size, shuffle=train, seed=ctx.config.seed,
                       workers=ctx.config.data.workers)


def _for_training(module: nn.Module, rt: Runtime, sync_bn: bool = False,
                  compiled: bool = False) -> nn.Module:
    """``module`` as a phase trains it: through ``torch.compile`` when asked, and inside
    DistributedDataParallel when running distributed. Its weights stay ``module``'s."""
    distributed = dist.is_distributed() and any(p.requires_grad for p in module.parameters())
    if distributed and sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if compiled:
        module = torch.compile(module)
    if not distributed:
        return module
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def monitor_for(config: Config) -> Monitor:
    """The rule of a phase's early stopping, best checkpoint and plateau schedule."""
    t = config.train
    return Monitor(t.monitor, t.mode, t.min_delta, t.patience)


def _epochs(cfg: Config, phase: str) -> int:
    """A head that fine-tuning follows only warms up (fastai's ``freeze_epochs``): trained
    to convergence on frozen features it overfits them, and fine-tuning from there ended
    lower on Intel's scenes (93.4% against 93.9% after one epoch of warm-up)."""
    return cfg.train.warmup_epochs if phase == "head" and cfg.train.finetune is not None \
        else cfg.train.epochs


def _image_phase(ctx: TrainingContext, name: str, params: list, lr: float, epochs: int,
                 schedule: str, before_epoch: Callable[[], None],
                 lr_option: str = "--lr") -> Phase:
    """A phase that trains ``params`` (or parameter groups) of the classifier on images:
    training batches augmented and mixed as the config says, validation ones plain."""
    cfg = ctx.config
    train_loader = _image_loader(ctx, "train", True, cfg.augment.preset)
    optimizer = make_optimizer(params, cfg.train.optimizer, lr, cfg.train.weight_decay)
    scheduler, per_step = make_scheduler(optimizer, schedule, epochs, len(train_loader),
                                         monitor_for(cfg).mode)
    return Phase(
        name, _for_training(ctx.model, ctx.rt, cfg.train.sync_bn, cfg.train.compile),
        train_loader, _image_loader(ctx, "val", False, "none"), optimizer, epochs,
        ctx.loss_fn, scheduler, per_step,
        mixer=create_batch_mixer(len(ctx.data.classes), cfg.augment.mixup, cfg.augment.cutmix),
        before_epoch=before_epoch, lr_option=lr_option,
    )


def _whole_model_phase(ctx: TrainingContext, name: str, frozen_body: bool) -> Phase:
    """The classifier trains on images (all of it, or its head with the body frozen)."""
    cfg, model = ctx.config, ctx.model
    if frozen_body:
        set_trainable(model, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    return _image_phase(ctx, name, params, cfg.train.lr, _epochs(cfg, name), cfg.train.schedule,
                        lambda: freeze_norm_stats(model))


def _head_on_features_phase(ctx: TrainingContext) -> Phase:
    """Frozen backbone, no augmentation: the head trains on cached features."""
    cfg = ctx.config
    set_trainable(ctx.model, 0)
    feats = {}
    engine, required = feature_engine(cfg, ctx.rt), cfg.train.feature_engine == "onnx"
    for split in ("train", "val"):
        images, labels = ctx.arrays[split]
        key_of = functools.partial(feature_key, ctx.image_keys[split], cfg, ctx.prep,
                                   ctx.meta["weights_source"], ctx.rt)
        features, ctx.features_by = cached_features(
            lambda: ctx.feature_module, images, labels, key_of, engine, required, ctx.rt,
            INFERENCE_BATCH,
            cfg.data.cache, ctx.model.body.num_features)
        feats[split] = ArrayDataset(features, labels, images=False)
    train_loader = make_loader(feats["train"], cfg.train.batch_size, True, cfg.seed, workers=0)
    # Features are small: the validation pass takes them in batches of 4 x INFERENCE_BATCH.
    val_loader = make_loader(feats["val"], 4 * INFERENCE_BATCH, False, cfg.seed, workers=0)
    head = ctx.model.head
    optimizer = make_optimizer(head.parameters(), cfg.train.optimizer, cfg.train.lr,
                               cfg.train.weight_decay)
    epochs = _epochs(cfg, "head")
    scheduler, per_step = make_scheduler(optimizer, cfg.train.schedule, epochs,
                                         len(train_loader), monitor_for(cfg).mode)
    feature_rt = ctx.rt.plain()
    return Phase("head", _for_training(head, feature_rt), train_loader, val_loader, optimizer,
                 epochs, ctx.loss_fn, scheduler, per_step, runtime=feature_rt)


def _finetune_phase(ctx: TrainingContext) -> Phase:
    cfg, model = ctx.config, ctx.model
    body_params = set_trainable(model, cfg.train.finetune)
    # As fastai's fine_tune: the warmed-up head goes on at half its rate, the backbone at
    # the (lower) fine-tuning rate, both under a one-cycle schedule whose warm-up keeps the
    # first steps from wrecking what the head learnt.
    groups = [{"params": body_params, "lr": cfg.train.finetune_lr},
              {"params": list(model.head.parameters()), "lr": cfg.train.lr / 2}]
    # Batches of 32 give noisy statistics; by default the unfrozen BatchNorm layers keep
    # the pretrained ones (Keras' advice for fine-tuning) while their scale and shift train.
    keep_stats = not cfg.train.finetune_norm_stats
    return _image_phase(ctx, "finetune", groups, cfg.train.finetune_lr,
                        cfg.train.finetune_epochs, "onecycle",
                        lambda: freeze_norm_stats(model, trainable_too=keep_stats),
                        "--finetune-lr, and --lr, whose half the head trains at")


def phase_names(cfg: Config) -> list[str]:
    """The phases a run of ``cfg`` trains in, in order."""
    if cfg.method != "transfer" or not cfg.train.freeze:
        return ["train"]
    return ["head", "finetune"] if cfg.train.finetune is not None else ["head"]


def plan_phases(ctx: TrainingContext) -> list[tuple[str, object]]:
    """The (name, factory) phases a method runs; a phase is built only when it starts."""
    cfg = ctx.config
    # The head's warm-up before fine-tuning trains on cached features, and augmentation
    # waits for the phase where the backbone learns: augmenting a warm-up would cost a
    # full backbone pass per image per epoch for a head that is about to move anyway.
    augmenting = cfg.augment.preset != "none" or cfg.augment.mixup or cfg.augment.cutmix
    cached = cfg.train.feature_cache and (cfg.train.finetune is not None or not augmenting)
    factories = {
        "train": lambda: _whole_model_phase(ctx, "train", frozen_body=False),
        "head": (lambda: _head_on_features_phase(ctx)) if cached else (
            lambda: _whole_model_phase(ctx, "head", frozen_body=True)),
        "finetune": lambda: _finetune_phase(ctx),
    }
    return [(name, factories[name]) for name in phase_names(cfg)]


def _resumed(last: dict, model: nn.Module, run_dir: Path, restore_best: bool) -> FitState:
    """Where the interrupted run of ``last`` (its last.pt) stood; ``model`` gets the weights
    it goes on from: the last epoch's, or, once its phase was done, that phase's best
    epoch's, as ``fit`` restored them."""
    state = FitState(last["history"], last["phase"], last["epoch"], last["phase_done"],
                     seconds=last.get("seconds", 0.0), trainable=last.get("trainable"),
                     features_by=last.get("features_by"))
    best = phase_best(run_dir, state.phase) if state.done and restore_best else None
    model.load_state_dict((best or last)["model"])
    return state


def _resume_phase(phase: Phase, monitor: Monitor, last: dict, run_dir: Path) -> None:
    """The phase the run was interrupted in goes on from ``last``: its optimiser, schedule,
    early stopping and random states as they were."""
    try:
        phase.optimizer.load_state_dict(last["optimizer"])
        if phase.scheduler is not None and last.get("scheduler"):
            phase.scheduler.load_state_dict(last["scheduler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise _edited(run_dir, first_line(exc)) from None
    monitor.load_state_dict(last["monitor"])
    restore_rng_state(last.get("rng"), phase.train_loader)


RESUMABLE_CHANGES = frozenset({
    "out", *PATH_SETTINGS, "train.epochs", "train.warmup_epochs", "train.finetune_epochs",
    "train.patience", "train.restore_best", "train.tta", "train.device", "train.amp",
    "train.channels_last", "train.compile", "train.sync_bn", "train.tensorboard",
    "train.feature_engine", "data.workers", "data.cache"})
"""Settings that a resumed run may take edited in its config.yaml: how long it trains,
where its files are, and how this machine computes; the others would make it train as no
uninterrupted run does (a learning rate its optimiser's saved state overrides, say)."""


def _check_unchanged(config: Config, last: dict, run_dir: Path) -> None:
    """Refuse to resume a run whose config.yaml was edited since its last checkpoint in
    any setting but ``RESUMABLE_CHANGES`` (checkpoints before the whole record was kept:
    in what shapes the model, whose weights would not fit, or its optimiser and schedule,
    whose saved states would not)."""
    if "settings" in last:
        now = flat_settings(config.to_dict())
        changed = {key: (now.get(key), then) for key, then in last["settings"].items()
                   if key not in RESUMABLE_CHANGES and now.get(key) != then}
        if changed:
            raise _edited(run_dir, changes_text(changed))
        return
    saved, prep = last["model_config"], last["preprocessing"]
    pairs = {"method": (config.method, last.get("method")),
             "model.name": (config.model.name, saved.get("name")),
             "model.head": (config.model.head, saved.get("head")),
             "model.dropout": (config.model.dropout, saved.get("dropout")),
             "model.img_size": (config.model.img_size, prep.get("img_size"))}
    training = last.get("training")  # not in checkpoints of imgclf before it
    if training is not None:
        pairs.update({f"train.{key}": (getattr(config.train, key), training.get(key))
                      for key in ("optimizer", "schedule")})
    changed = [changes_text({key: (now, then)}) for key, (now, then) in pairs.items()
               if now != then]
    if last.get("phase") and last["phase"] not in phase_names(config):
        changed.append(f"it stopped in a {last['phase']} phase, which train.freeze and "
                       "train.finetune as they are now leave out")
    if changed:
        raise _edited(run_dir, "; ".join(changed))


def _edited(run_dir: Path, what: str) -> RunError:
    """The error of a resume whose config.yaml no longer fits the run's last.pt (``what``)."""
    return RunError(f"{run_dir / CONFIG_FILE} no longer matches the run's {LAST_CHECKPOINT} "
                    f"({what}): put back the settings the run started with, or train a new "
                    "run into another --out.")


def _last_checkpoint(run_dir: Path) -> dict:
    """The interrupted run's last.pt; where it is damaged, the error says how to go on
    from its best epoch's checkpoint instead, where there is one."""
    last = run_dir / LAST_CHECKPOINT
    try:
        return load_checkpoint(last)
    except NotACheckpoint:
        raise RunError(f"cannot resume: {last} is damaged, or not an imgclf checkpoint."
                       f"{_from_best(run_dir)}") from None


def _from_best(run_dir: Path) -> str:
    best = run_dir / BEST_CHECKPOINT
    if not best.is_file():
        return ""
    return (f" The checkpoint of its best epoch is there: copy {best} to "
            f"{run_dir / LAST_CHECKPOINT} to resume from that epoch, or delete {run_dir} to "
            "train the run again.")


def _prepare_run_dir(config: Config, resume: bool) -> Path:
    """The run folder, checked against ``resume``; created later, once the data and model
    are known to be usable, so that a failed start leaves no empty run folder behind."""
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    if resume:
        if (run_dir / METRICS_FILE).exists():
            raise RunError(f"{run_dir} holds a finished run (metrics.json): there is nothing "
                           "to resume. To train for more epochs, train a new run into "
                           "another --out.")
        if not (run_dir / LAST_CHECKPOINT).exists():
            if (run_dir / BEST_CHECKPOINT).exists():
                raise RunError(f"cannot resume: {run_dir} has no {LAST_CHECKPOINT}, so there "
                               f"is nothing to go on from.{_from_best(run_dir)}")
            if (run_dir / CONFIG_FILE).exists():
                raise RunError(f"cannot resume: the run in {run_dir} stopped before it saved "
                               "a checkpoint (last.pt), so there is nothing to go on from: run "
                               "the same command again, without --resume.")
            raise RunError(f"cannot resume: {run_dir / LAST_CHECKPOINT} does not exist. "
                           "Pass --out with the folder of the interrupted run.")
    elif (run_dir / METRICS_FILE).exists():
        raise RunError(f"{run_dir} already holds a finished run: choose another --out, or "
                       "delete that folder to train it again.")
    elif (run_dir / LAST_CHECKPOINT).exists():
        # Or a run still training: its lock is taken only after these checks.
        raise RunError(f"{run_dir} already holds an unfinished run, or one still training; "
                       "use --resume to continue an interrupted one, or choose another --out.")
    d = config.data
    # config.yaml marks a run folder, maybe of a run that failed before its first epoch.
    check_output_folder(run_dir, (d.data, d.train, d.val, d.test),
                        lambda names: CONFIG_FILE in names)
    check_outside_other_runs(run_dir, None, "choose --out outside any run folder")
    return run_dir


def train(config: Config, resume: bool = False) -> Path:
    """Train as ``config`` says; returns the run folder with checkpoints, history, metrics.

    Launched by torchrun, every process joins the group and trains its shard of each
    epoch with DistributedDataParallel; rank 0 alone writes files.
    """
    started = dist.init_from_env(config.train.device)
    try:
        with contextlib.ExitStack() as held:
            return _train(config, resume, held)
    except Interrupted:  # in the epochs: it says what was saved
        raise
    except KeyboardInterrupt:  # outside the epochs
        last = Path(config.out or ".") / LAST_CHECKPOINT
        if config.out and last.exists():
            raise Interrupted(f"interrupted; the run's last checkpoint is saved in {last}. "
                              f"{resume_advice(last.parent)}") from None
        raise Interrupted("training interrupted before its first checkpoint, so there is "
                          "nothing to resume: run the same command again.") from None
    finally:
        if started:
            dist.shutdown()


def _check_method_model(config: Config) -> None:
    """Fail before scanning the data: the model must exist, and transfer needs a backbone
    with a head to train, which imgclf's own CNNs do not have."""
    check_model_name(config.model.name)
    own = get_spec(config.model.name) is not None
    if config.method != "transfer" and not own and config.model.pretrained:
        raise ConfigError(
            f"method {config.method} trains from random weights, but {config.model.name} would "
            "start from ImageNet weights: add --no-pretrained to train it from scratch, or "
            "use --method transfer."
        )
    if config.method == "transfer" and own:
        raise ConfigError(
            f"method transfer needs a timm backbone, but model {config.model.name!r} is one of "
            "imgclf's own networks, which train from scratch. Use --method scratch or "
            "augment for it, or choose a backbone with --backbone (e.g. mobilenetv2_100)."
        )
    defaults = ModelSection()
    given = [f"model.{key} (--{key})" for key in ("head", "dropout", "weights")
             if getattr(config.model, key) != getattr(defaults, key)]
    if own and given:
        raise ConfigError(
            f"{', '.join(given)} applies to timm backbones (their new head, their weights), "
            f"but {config.model.name!r} is one of imgclf's own networks, whose layers and "
            "dropout are fixed (see README): leave it out."
        )


def _train(config: Config, resume: bool, held: contextlib.ExitStack) -> Path:
    """``train`` in one process; ``held`` keeps the run folder's lock to the end."""
    _check_method_model(config)
    seed_everything(config.seed)
    rt = resolve_runtime(config.train.device, config.train.amp, config.train.channels_last)
    run_dir = _prepare_run_dir(config, resume)
    config.out = str(run_dir)  # the folder chosen when none was given
    if dist.is_main():  # after the checks: they refuse a cache folder inside the dataset
        held.enter_context(run_folder_lock(run_dir))
    d = config.data
    data = prepare_run_data(config)
    if data.val_source == "split" and d.val_fraction != DataSection.val_fraction:
        log.warning("data.val_fraction %g is not used: the data has its own validation "
                    "split (%s)", d.val_fraction, data.layout.val)
    contents = data.contents()  # the files as found, before any fails to decode
    last = _last_checkpoint(run_dir) if resume else None
    if last is not None:
        data.check_resumable(last.get("data"), contents)
    config.make_paths_absolute()  # config.yaml resumes from any folder
    log.info(data.summary())
    if last is None:
        model, prep, source = create_model(
            config.model.name, len(data.classes), img_size=config.model.img_size,
            pretrained=config.model.pretrained, weights=config.model.weights,
            head=config.model.head, dropout=config.model.dropout)
    else:
        _check_unchanged(config, last, run_dir)
        # Its weights come from last.pt: whatever weights the backbone's source holds now,
        # or whether it is there at all.
        model, prep = model_from_checkpoint(last)
        source = last.get("weights_source", "")
    config.model.img_size = prep.img_size
    stages = config.train.finetune
    if stages not in (None, "all") and int(stages) > (groups := len(backbone_groups(model))):
        raise ConfigError(f"--finetune {stages}: {config.model.name} has {groups} stages to "
                          "fine-tune; give at most that many, or 'all'.")
    model = rt.place(model)
    arrays, image_keys, copies = _decode_splits(data, prep, d.cache)
    if dist.is_main():
        dist.barrier()
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG_FILE)
        write_skipped(data.skipped, run_dir / SKIPPED_FILE)
    dist.barrier()
    meta = checkpoint_meta(config, data.classes, prep, source, contents)
    ctx = TrainingContext(config, data, model, prep, rt, run_dir, arrays, image_keys, meta)
    state = FitState() if last is None else _resumed(last, model, run_dir,
                                                     config.train.restore_best)
    total, _ = count_parameters(model)
    log.info("model %s (%s), %s parameters, on %s", config.model.name, source, f"{total:,}",
             rt.describe())
    state.started = time.perf_counter()
    plan = plan_phases(ctx)
    names = [name for name, _ in plan]  # holding the phase it stopped in (_check_unchanged)
    start = names.index(state.phase) + state.done if state.phase else 0
    if last is not None and state.done:
        # The next phase starts from the random state the done one left, as it would have
        # (its loader's own generator is seeded afresh).
        restore_rng_state(last.get("rng"), None)
    logger = _tensorboard_logger(config, run_dir)
    try:
        for _, factory in plan[start:]:
            phase = factory()
            monitor = monitor_for(config)
            if last is not None and state.phase == phase.name:
                _resume_phase(phase, monitor, last, run_dir)
            _, state.trainable = count_parameters(model)
            state.features_by = ctx.features_by or state.features_by
            log.info("phase %s: %s trainable parameters", phase.name, f"{state.trainable:,}")
            state = fit(phase, phase.runtime or rt, monitor, run_dir, model, meta, state,
                        restore_best=config.train.restore_best, epoch_logger=logger)
    finally:  # interrupted or failed too: its writer thread and file go
        if logger is not None:
            logger.close()
    train_seconds = state.elapsed()  # earlier sessions of a resumed run included
    _write_results(ctx, state, train_seconds, total, copies)
    return run_dir


def _decode_splits(data: PreparedData, prep: Preprocessing, cache: bool
                   ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str],
                              dict[str, int]]:
    """Each split's (images, labels) decoded at the model's size, its cache key, and how
    many of its images copy a training image (warned of: they flatter the figures)."""
    arrays, image_keys = {}, {}
    if not dist.is_main():
        dist.wait_for_main()  # rank 0 decodes into the cache first; the others read it
    skipped = len(data.skipped)
    for name, split in data.splits.items():
        images, labels, key = decode_split(split, prep.img_size, prep.interpolation, cache)
        arrays[name], image_keys[name] = (images, labels), key
    if len(data.skipped) > skipped:
        data.recount()
    copies = copies_of_training_images(data.splits)
    for name, n in copies.items():
        if n:
            log.warning("%s: %d of %d images are exact copies of training images, so its "
                        "figures flatter the model (`imgclf audit` lists them)",
                        name, n, len(data.splits[name]))
    return arrays, image_keys, copies


def _write_results(ctx: TrainingContext, state: FitState, train_seconds: float, total: int,
                   copies: dict[str, int]) -> None:
    """After training: model.pt, then the evaluation on the test split (or validation,
    without one) with the run's figures, the mirror-image check and the run's facts."""
    config, data, run_dir = ctx.config, ctx.data, ctx.run_dir
    judge, judge_rt, judged_by = _evaluated_model(ctx, state.features_by)
    tta, tta_check = choose_tta(config.train.tta, judge, *ctx.arrays["val"], judge_rt)
    eval_split = "test" if "test" in ctx.arrays else "val"
    images, labels = ctx.arrays[eval_split]
    if dist.is_main():
        # The final weights (the best epoch's, when restoring best) without training state:
        # what evaluate, predict and export load. The data's file names stay in the run's
        # checkpoints, where resuming names what changed, and out of a model to be shared;
        # so do the settings, with their local paths.
        data_record = {k: v for k, v in ctx.meta["data"].items() if k != "listing"}
        meta = {k: v for k, v in ctx.meta.items() if k != "settings"}
        save_atomic(dict(meta, data=data_record, model=ctx.model.state_dict(), tta=tta),
                    run_dir / MODEL_FILE)
    write_evaluation(judge, images, labels, data.splits[eval_split].paths, data.classes,
                     judge_rt, run_dir, split=eval_split, history=state.history, tta=tta,
                     best=best_epoch(state.history, config.train.monitor, config.train.mode,
                                     config.train.min_delta),
                     extra={**({"note": "the data has no test split: these figures are on "
                                         "the validation split, which also chose the best "
                                         "epoch"} if eval_split == "val" else {}),
                            "train_seconds": round(train_seconds, 2),
                            "tta_validation": tta_check,
                            "parameters": {"total": total, "trainable": state.trainable},
                            "skipped_files": len(data.skipped),
                            "copies_of_training_images": copies,
                            "evaluated_by": judged_by,
                            "data_summary": data.summary()})


def _evaluated_model(ctx: TrainingContext, features_by: str | None
                     ) -> tuple[nn.Module, Runtime, str]:
    """What evaluates the trained run, its runtime, and what runs it: the classifier, or,
    when only a head trained on ONNX Runtime's features of the frozen body, that head over
    ONNX Runtime's body, which runs about twice as fast on a CPU and gives the features the
    head learnt."""
    if features_by == "onnx" and ctx.config.train.finetune is None:
        body = ctx.feature_module
        if isinstance(body, OnnxModule):
            return (HeadOverFeatures(body, ctx.model.head), _runtime_for(body, ctx.rt),
                    "ONNX Runtime (frozen backbone), PyTorch (head)")
    return ctx.model, ctx.rt, "PyTorch"


def _tensorboard_logger(config: Config, run_dir: Path):
    if not config.train.tensorboard or not dist.is_main():
        return None
    from imgclf.engine.tb import TensorBoardLogger

    return TensorBoardLogger(run_dir / "tensorboard")
