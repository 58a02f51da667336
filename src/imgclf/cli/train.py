"""``imgclf train``: train a classifier by one of the three methods and evaluate it."""

from __future__ import annotations

import argparse
import functools

from imgclf.config import DEFAULT_BACKBONE, METHODS, build_config, resume_config
from imgclf.errors import ConfigError


@functools.cache
def _presets() -> dict:
    """Each method's resolved settings, built once for all the help texts."""
    return {m: build_config(m) for m in METHODS}


def preset_default(key: str) -> str:
    """The default of setting ``key`` (``train.lr``, ``seed``) as help text, read from the
    method presets so that the help cannot drift from them: "default 32", or, where the
    methods differ, "default: by method, scratch 0.001, augment 0.001, transfer 0.0003"."""
    values = {m: functools.reduce(getattr, key.split("."), config)
              for m, config in _presets().items()}
    shown = {m: f"{v:g}" if isinstance(v, float) else str(v) for m, v in values.items()}
    if len(set(shown.values())) == 1:
        return f"default {shown[METHODS[0]]}"
    return "default: by method, " + ", ".join(f"{m} {v}" for m, v in shown.items())


def add_data_options(parser: argparse.ArgumentParser) -> None:
    from imgclf.cli.common import DATA_HELP

    parser.add_argument("data", nargs="?", default=None, help=DATA_HELP)
    parser.add_argument("--train", dest="data.train", default=argparse.SUPPRESS, metavar="FOLDER",
                        help="training split folder (instead of DATA)")
    parser.add_argument("--val", dest="data.val", default=argparse.SUPPRESS, metavar="FOLDER",
                        help="validation split folder, instead of DATA's own (default: "
                             f"{100 * _presets()[METHODS[0]].data.val_fraction:g}%% of train, "
                             "stratified)")
    parser.add_argument("--test", dest="data.test", default=argparse.SUPPRESS, metavar="FOLDER",
                        help="test split folder, instead of DATA's own")


class OneModelName(argparse.Action):
    """``--model`` and ``--backbone`` set one setting: both, naming different models, are an
    error instead of the last silently winning."""

    def __call__(self, parser, namespace, values, option_string=None):
        earlier = getattr(namespace, self.dest, None)
        if earlier is not None and earlier != values:
            parser.error(f"{option_string} {values} names another model than the one given "
                         f"before it ({earlier}); --model and --backbone are one setting, "
                         "give it once")
        setattr(namespace, self.dest, values)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Every training option; shared with ``imgclf compare``."""
    from imgclf.cli.common import option

    m = parser.add_argument_group("model")
    option(m, "--model", dest="model.name", action=OneModelName, metavar="MODEL",
           help="model name: small_cnn, small_cnn_wide or any timm model (in compare: "
                "the network of the scratch and augment runs; transfer runs take "
                "--backbones)")
    option(m, "--head", dest="model.head",
           help="transfer head: reference (dense 1024, ReLU, dropout 0.2) or linear")
    option(m, "--weights", dest="model.weights",
           help="ImageNet weights file for the backbone (.safetensors or .pth state dict)")
    option(m, "--no-pretrained", dest="model.pretrained", action="store_const", const=False,
           help="start the backbone from random weights")
    option(m, "--img-size", dest="model.img_size", type=int,
           help="input size in pixels (default: the backbone's own, 150 for the small CNNs)")
    option(m, "--dropout", dest="model.dropout", type=float,
           help="dropout before the last layer of a transfer head")

    t = parser.add_argument_group("training")
    option(t, "--epochs", dest="train.epochs", type=int,
           help=f"maximum epochs ({preset_default('train.epochs')}; with --finetune, "
                "--warmup-epochs and --finetune-epochs instead)")
    option(t, "--batch-size", dest="train.batch_size", type=int,
           help=f"batch size ({preset_default('train.batch_size')})")
    option(t, "--lr", dest="train.lr", type=float,
           help=f"learning rate ({preset_default('train.lr')})")
    option(t, "--optimizer", dest="train.optimizer",
           help=f"optimiser ({preset_default('train.optimizer')})")
    option(t, "--weight-decay", dest="train.weight_decay", type=float,
           help=f"weight decay ({preset_default('train.weight_decay')})")
    option(t, "--schedule", dest="train.schedule",
           help=f"learning-rate schedule ({preset_default('train.schedule')}; fine-tuning "
                "always uses onecycle)")
    option(t, "--label-smoothing", dest="train.label_smoothing", type=float,
           help=f"label smoothing for the loss ({preset_default('train.label_smoothing')})")
    option(t, "--class-weight", dest="train.class_weight",
           help="auto weights the loss by inverse class frequency (for imbalanced data)")
    option(t, "--monitor", dest="train.monitor",
           help="metric for early stopping and the best checkpoint "
                f"({preset_default('train.monitor')})")
    option(t, "--mode", dest="train.mode",
           help="whether the monitored metric should go down or up "
                f"({preset_default('train.mode')})")
    option(t, "--min-delta", dest="train.min_delta", type=float,
           help="smallest change that counts as an improvement")
    option(t, "--patience", dest="train.patience", type=int,
           help="epochs without improvement before stopping (0: never stop early; "
                f"{preset_default('train.patience')})")
    option(t, "--no-restore-best", dest="train.restore_best", action="store_const", const=False,
           help="keep the last epoch's weights rather than the best epoch's")
    option(t, "--finetune", dest="train.finetune",
           help="transfer: after warming up the head, unfreeze the backbone's last N "
                "stages (N of 1 or more, or 'all') and train them with the head for "
                "--finetune-epochs")
    option(t, "--warmup-epochs", dest="train.warmup_epochs", type=int,
           help="with --finetune: epochs of the head alone before the backbone unfreezes "
                f"({preset_default('train.warmup_epochs')}, as fastai's fine_tune; without "
                "--finetune the head trains for --epochs)")
    option(t, "--finetune-epochs", dest="train.finetune_epochs", type=int,
           help=f"epochs of fine-tuning ({preset_default('train.finetune_epochs')})")
    option(t, "--finetune-lr", dest="train.finetune_lr", type=float,
           help="backbone learning rate when fine-tuning (head: half of --lr; "
                f"{preset_default('train.finetune_lr')})")
    option(t, "--finetune-norm-stats", dest="train.finetune_norm_stats", action="store_const",
           const=True, help="fine-tuning: let the unfrozen stages' BatchNorm layers update "
                            "their running statistics (default: keep the pretrained ones)")
    option(t, "--no-feature-cache", dest="train.feature_cache", action="store_const",
           const=False, help="transfer: run the frozen backbone every epoch instead of "
                             "caching its features")
    option(t, "--feature-engine", dest="train.feature_engine",
           help="transfer: what computes the frozen backbone's cached features: ONNX "
                "Runtime (onnx; about twice PyTorch's speed on a CPU), PyTorch (torch), or "
                "auto (the default: onnx on a CPU when onnxruntime is installed)")
    option(t, "--tta", dest="train.tta",
           help="test-time augmentation: average each image's probabilities with its mirror "
                "image's when evaluating and predicting; auto keeps it if it raises validation "
                "accuracy (the scratch and augment presets' default; otherwise off)")

    a = parser.add_argument_group("augmentation")
    option(a, "--augment", dest="augment.preset",
           help="augmentation preset (reference = the study's Keras ImageDataGenerator)")
    option(a, "--mixup", dest="augment.mixup", type=float, help="MixUp alpha (0: off)")
    option(a, "--cutmix", dest="augment.cutmix", type=float, help="CutMix alpha (0: off)")

    r = parser.add_argument_group("data and runtime")
    option(r, "--val-fraction", dest="data.val_fraction", type=float,
           help="share of train held out for validation when there is no val split "
                f"({preset_default('data.val_fraction')})")
    option(r, "--no-cache", dest="data.cache", action="store_const", const=False,
           help="do not keep decoded images and features in the user cache folder")
    option(r, "--loader-workers", dest="data.workers", type=int,
           help="data-loader processes (default: 0 without augmentation or with the batch-wise "
                "reference preset, else one per spare core, at most 4)")
    option(r, "--device", dest="train.device", help="auto (default), cpu, cuda or cuda:N")
    option(r, "--amp", dest="train.amp",
           help="mixed precision: auto uses bf16 where the hardware runs it natively")
    option(r, "--no-channels-last", dest="train.channels_last", action="store_const",
           const=False, help="keep NCHW memory format")
    option(r, "--compile", dest="train.compile", action="store_const", const=True,
           help="train the model through torch.compile (a one-off compile of seconds to "
                "minutes; on the 2-core CPU measured, training steps were slower)")
    option(r, "--tensorboard", dest="train.tensorboard", action="store_const", const=True,
           help="also log per-epoch scalars for TensorBoard (RUN_DIR/tensorboard)")
    option(r, "--sync-bn", dest="train.sync_bn", action="store_const", const=True,
           help="with torchrun: synchronise BatchNorm statistics across processes")
    option(r, "--seed", dest="seed", type=int,
           help="random seed for the split, initialisation and shuffling "
                f"({preset_default('seed')})")
    parser.add_argument("--config", default=None,
                        help="YAML file of settings (sections data, augment, model, train)")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a classifier (scratch, augment or transfer) and evaluate it",
        description="Train on DATA and evaluate on its test split (or validation split).")
    add_data_options(parser)
    parser.add_argument("--method", default=argparse.SUPPRESS, choices=METHODS,
                        help="scratch (small CNN), augment (CNN + augmentation) or transfer "
                             "(pretrained backbone + new head); default scratch")
    parser.add_argument("--backbone", dest="model.name", default=argparse.SUPPRESS, metavar="NAME",
                        action=OneModelName,
                        help=f"transfer backbone, any timm model (default {DEFAULT_BACKBONE})")
    parser.add_argument("--out", default=argparse.SUPPRESS,
                        help="run folder (default runs/METHOD-MODEL)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out from its last checkpoint")
    add_training_options(parser)
    from imgclf.cli.common import add_verbosity

    add_verbosity(parser)
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from imgclf.cli.common import overrides_from

    overrides = overrides_from(args)
    if args.data is not None:
        overrides.setdefault("data", {})["data"] = args.data
    # --method stays among the overrides, so that it beats a method named in --config.
    return build_config("scratch", args.config, overrides)


def run(args: argparse.Namespace) -> int:
    from imgclf.cli.common import print_headline
    from imgclf.engine.trainer import train
    from imgclf.machine import env_rank
    from imgclf.paths import METRICS_FILE, read_run_metrics

    if args.resume:
        from imgclf.cli.common import overrides_from

        given = [k for k in overrides_from(args) if k != "out"]
        given += [k for k in ("data", "config") if getattr(args, k) is not None]
        config = resume_config(getattr(args, "out", None), given)
    else:
        config = config_from_args(args)
        if config.data.data is None and config.data.train is None:
            raise ConfigError("no dataset given: imgclf train DATA (or --train FOLDER).")
    run_dir = train(config, resume=args.resume)
    if env_rank() == 0:
        print_headline(read_run_metrics(run_dir / METRICS_FILE))
        print(f"run folder: {run_dir}")
    return 0
