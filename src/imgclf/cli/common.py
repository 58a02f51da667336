"""Pieces several subcommands share: logging set-up and config options as dotted dests."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from imgclf.config import CHOICES
from imgclf.machine import env_rank

DATA_HELP = ("dataset folder: class subfolders, or train/ val/ test/ splits (Kaggle's "
             "seg_train/seg_train layout works too)")


HEADLINE = ("split", "n_samples", "accuracy", "balanced_accuracy", "f1_macro", "cohen_kappa",
            "mcc", "roc_auc")
"""The figures ``train`` and ``evaluate`` print on stdout (all of them are in metrics.json)."""


def print_headline(metrics: dict) -> None:
    print(json.dumps({k: metrics[k] for k in HEADLINE if k in metrics}, indent=2))


def setup_logging(verbosity: int = 0) -> None:
    """Log lines on stderr: warnings with -q; info lines by default; with -v imgclf's own
    debug lines too, and with -vv the libraries' (matplotlib's font search alone is
    hundreds of lines)."""
    level = logging.WARNING if verbosity < 0 else logging.INFO
    if env_rank() != 0 and verbosity <= 0:  # rank 0 logs for all: warnings once
        level = logging.ERROR
    logging.basicConfig(level=logging.DEBUG if verbosity > 1 else level, format="%(message)s",
                        stream=sys.stderr, force=True)
    logging.getLogger("imgclf").setLevel(logging.DEBUG if verbosity > 0 else logging.NOTSET)


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more detail in the log: imgclf's debug messages (-vv: those "
                             "of the libraries it uses too)")
    parser.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbose",
                        help="no log lines or progress bars, only warnings and errors; "
                             "the results still print on stdout")


def add_tta(parser: argparse.ArgumentParser) -> None:
    """``--tta`` / ``--no-tta`` for commands that run a trained model; neither: as the run
    chose when it was trained (``train.tta``)."""
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation: average each image's probabilities with "
                             "its mirror image's (default: as the run was trained to; the "
                             "scratch and augment presets keep it when it helps on validation)")


def option(parser, *flags, dest: str, help: str, **kwargs) -> None:
    """An option that overrides config key ``dest`` (dotted), only when given, limited to
    the key's ``CHOICES`` where it has them. Its value is shown in the help as the option's
    name (``--epochs EPOCHS``), not the config key."""
    if dest in CHOICES:
        kwargs["choices"] = CHOICES[dest]
    if "action" not in kwargs and "choices" not in kwargs:
        kwargs.setdefault("metavar", flags[-1].lstrip("-").replace("-", "_").upper())
    parser.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, help=help, **kwargs)


def overrides_from(args: argparse.Namespace) -> dict:
    """Nested config overrides from the dotted dests that were given on the command line."""
    nested: dict = {}
    for key, value in vars(args).items():
        if "." not in key and key not in ("method", "seed", "out"):
            continue
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
