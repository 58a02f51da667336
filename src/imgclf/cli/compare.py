"""``imgclf compare``: methods and backbones side by side in one leaderboard."""

from __future__ import annotations

import argparse
import csv
import sys

from imgclf.cli.common import DATA_HELP, add_verbosity, overrides_from
from imgclf.cli.train import add_training_options
from imgclf.config import DEFAULT_BACKBONE
from imgclf.errors import RunError
from imgclf.leaderboard import SORT_KEYS
from imgclf.paths import LEADERBOARD_FILE, LEADERBOARD_MD


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="train several methods/backbones and rank them in a leaderboard",
        description="Train every requested combination through the same loop, then write "
                    "leaderboard.csv and leaderboard.md in --out. Repeating the command "
                    "keeps finished runs and retries the rest.")
    parser.add_argument("data", help=DATA_HELP + "; every run uses its splits (compare takes "
                                               "no --train, --val or --test)")
    parser.add_argument("--methods", default="scratch,augment,transfer",
                        help="comma-separated methods (default scratch,augment,transfer)")
    parser.add_argument("--backbones", default=None,
                        help="comma-separated transfer backbones; 'offline' = every backbone "
                             f"with ImageNet weights on this machine (default "
                             f"{DEFAULT_BACKBONE})")
    parser.add_argument("--out", required=True, help="compare folder (one subfolder per run)")
    parser.add_argument("--sort", default="accuracy",
                        help="what ranks the runs, best first, in the leaderboard and in "
                             f"`imgclf report`: one of {', '.join(SORT_KEYS)} (default "
                             "accuracy)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs trained in parallel processes, each with its share of "
                             "the cores (default 1)")
    parser.add_argument("--no-audit", action="store_true",
                        help="skip the dataset audit (audit.json, shown in the report)")
    add_training_options(parser)
    add_verbosity(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.compare import compare

    overrides = overrides_from(args)
    overrides.pop("out", None)
    if args.config:
        overrides["config_file"] = args.config
    out = compare(args.data, args.methods, args.backbones, args.out, overrides,
                  sort_by=args.sort, workers=args.workers, audit=not args.no_audit)
    print((out / LEADERBOARD_MD).read_text(encoding="utf-8"))
    print(f"leaderboard: {out / LEADERBOARD_FILE}")
    with open(out / LEADERBOARD_FILE, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    failed = [row["run"] for row in rows if row["status"] != "ok"]
    if not failed:
        return 0
    reasons = f"the reasons are in the error column and in each run's error.txt under {out}"
    if len(failed) == len(rows):
        raise RunError(f"every run failed: {reasons}.")
    # Exit status 1, as audit's for problems: a script goes on only when every run trained.
    print(f"error: {len(failed)} of {len(rows)} runs failed ({', '.join(failed)}): {reasons}.",
          file=sys.stderr)
    return 1
