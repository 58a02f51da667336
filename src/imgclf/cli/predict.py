"""``imgclf predict``: classify new images with a trained run."""

from __future__ import annotations

import argparse
from collections import Counter

from imgclf.config import INFERENCE_BATCH


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="predict the class of new, unlabelled images",
        description="Classify image files and folders (walked recursively) with a trained run; "
                    "writes path (as the command line named it), predicted class, confidence "
                    "and one probability per class, as CSV or JSON (by the name of --out).")
    parser.add_argument("run", help="run folder written by `imgclf train`")
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--out", default="predictions.csv", metavar="FILE",
                        help="file to write, a .csv or .json name (default predictions.csv); "
                             "never one of the files imgclf wrote into a run or compare folder")
    parser.add_argument("--batch-size", type=int, default=INFERENCE_BATCH,
                        help=f"images per batch ({INFERENCE_BATCH})")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--engine", choices=("torch", "onnx"), default="torch",
                        help="inference engine: torch, or onnx (ONNX Runtime, needs an export)")
    from imgclf.cli.common import add_tta, add_verbosity

    add_tta(parser)
    add_verbosity(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.errors import ConfigError, DataError
    from imgclf.paths import run_datasets
    from imgclf.predict import checked_batch_size, output_format, run_folder, walked_folders

    # Before the model loads and runs: a wrong name or number fails at once.
    folder = run_folder(args.run)
    # Nor into the folders it classifies (`imgclf predict RUN .`, the default --out).
    output_format(args.out, run_datasets(folder), folder, walked_folders(args.paths))
    checked_batch_size(args.batch_size)
    if args.engine == "onnx":
        from imgclf.export import OnnxPredictor

        if args.device not in ("auto", "cpu"):
            raise ConfigError(f"--engine onnx runs on the CPU; --device {args.device} needs "
                              "--engine torch.")
        predictor = OnnxPredictor(args.run)
    else:
        from imgclf.predict import Predictor

        predictor = Predictor(args.run, device=args.device)
    predictions = predictor.predict(args.paths, batch_size=args.batch_size, tta=args.tta)
    errors = [p for p in predictions if p.error]
    counts = Counter(p.predicted for p in predictions if not p.error)
    for p in errors[:10]:
        print(f"  could not read {p.path}: {p.error}")
    if not counts:  # nothing to write: an earlier file of that name stays as it was
        raise DataError("no image could be predicted"
                        + (f": {len(errors)} file(s) could not be read." if errors
                           else f": no image files in {', '.join(args.paths)}."))
    out = predictor.write(predictions, args.out)
    print(f"{len(predictions) - len(errors)} image(s) predicted -> {out}")
    for label, n in sorted(counts.items()):
        print(f"  {label}: {n}")
    if errors:
        shown = "the first 10 above" if len(errors) > 10 else "above"
        print(f"{len(errors)} file(s) could not be read (reasons {shown}, all in {out})")
    return 0
