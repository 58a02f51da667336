"""``imgclf audit``: check a dataset before training on it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit", help="check a dataset: counts, sizes, broken files, duplicates, leakage",
        description="Report images per split and class, class imbalance, image sizes, modes "
                    "and formats, files whose extension lies about their format, unreadable "
                    "and skipped files, identical files within and across splits and classes, "
                    "and near-duplicates across splits. Exits with 1 when it finds a problem "
                    "that stops training (a class without a readable image, a single class, "
                    "an empty split), with 2 when it cannot run (DATA is not a dataset, --json "
                    "names a file it may not write), else 0.")
    from imgclf.cli.common import DATA_HELP, add_verbosity

    parser.add_argument("data", nargs="?", default=None, help=DATA_HELP)
    parser.add_argument("--train", default=None,
                        help="training split folder (instead of DATA)")
    parser.add_argument("--val", default=None, help="validation split folder")
    parser.add_argument("--test", default=None, help="test split folder")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the full report (every file listed) as JSON to FILE, "
                             "a .json name outside the dataset; an existing FILE only if an "
                             "earlier audit wrote it")
    parser.add_argument("--no-near-duplicates", dest="near_duplicates", action="store_false",
                        help="skip the perceptual-hash search for near-duplicates across splits")
    parser.add_argument("--workers", type=int, default=None,
                        help="threads that read the images (default: one per CPU core)")
    add_verbosity(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.data.audit import audit_dataset, format_audit
    from imgclf.paths import AUDIT_FILE, SIGNATURES, check_output_file, dataset_paths, write_text

    data, train, val, test = dataset_paths(args.data, args.train, args.val, args.test)
    if args.json is not None:  # before the images are read: a wrong name fails at once
        check_output_file(args.json, (".json",), (data, train, val, test), AUDIT_FILE,
                          starts=(SIGNATURES[AUDIT_FILE],), what="an audit report")
    report = audit_dataset(data, train=train, val=val, test=test,
                           near_duplicates=args.near_duplicates, workers=args.workers)
    print(format_audit(report))
    if args.json is not None:
        out = Path(args.json)
        write_text(out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"\nfull report written to {out}")
    return 1 if report["problems"] else 0  # `imgclf audit DATA && imgclf train DATA`
