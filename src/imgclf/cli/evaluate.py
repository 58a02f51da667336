"""``imgclf evaluate``: metrics and plots for a trained run on labelled data."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a trained run on labelled images",
        description="Evaluate RUN on DATA's test split (or, for a plain folder of class "
                    "subfolders, on all of it); writes metrics.json, predictions.csv and plots.")
    parser.add_argument("run", help="run folder written by `imgclf train`")
    parser.add_argument("data", help="labelled dataset folder")
    parser.add_argument("--split", choices=("test", "val", "train"), default=None,
                        help="which split to evaluate (default: test if present); val on the "
                             "run's own dataset without a val/ folder is the validation set "
                             "the run split off its training images")
    parser.add_argument("--out", default=None,
                        help="folder for the results (default RUN/evaluate-<split>, or "
                             "RUN/evaluate-<DATA's name> for a folder of classes)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    from imgclf.cli.common import add_tta, add_verbosity

    add_tta(parser)
    add_verbosity(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.cli.common import print_headline
    from imgclf.evaluation import evaluate_folder

    metrics, out = evaluate_folder(args.run, args.data, split=args.split, out=args.out,
                                   device=args.device, tta=args.tta)
    print_headline(metrics)
    print(f"results: {Path(out)}")
    return 0
