"""``imgclf report``: one self-contained HTML page for a run or a comparison."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report of a run or compare folder",
        description="Write one HTML file for a run folder (from `imgclf train`) or a compare "
                    "folder (from `imgclf compare`): dataset summary, leaderboard, learning "
                    "curves, confusion matrices, ROC curves, per-class scores, the most "
                    "confident mistakes and each run's configuration. Every image is "
                    "embedded, so the file opens offline.")
    parser.add_argument("dir", metavar="DIR",
                        help="run folder (has metrics.json) or compare folder (has "
                             "leaderboard.csv)")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="where to write the HTML file, an .html name (default "
                             "DIR/report.html); never a file that is not an imgclf report, nor "
                             "inside a dataset the runs used")
    from imgclf.cli.common import add_verbosity

    add_verbosity(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.report import write_report

    out = write_report(args.dir, args.out)
    print(out)
    return 0
