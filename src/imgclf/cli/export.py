"""``imgclf export``: write a trained run's model as ONNX or TorchScript."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a trained run to ONNX or TorchScript",
        description="Write a finished run's final model (model.pt) as ONNX (RUN/model.onnx, "
                    "for ONNX Runtime and `imgclf predict --engine onnx`) or TorchScript "
                    "(RUN/model.torchscript.pt), plus a JSON sidecar with the class names "
                    "and preprocessing. The model takes float32 RGB images in the 0-255 "
                    "range, NCHW, and returns logits.")
    parser.add_argument("run", help="run folder written by `imgclf train`")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                        help="export format (default onnx)")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="file to write (default RUN/model.onnx or "
                             "RUN/model.torchscript.pt); the sidecar is FILE.json. Neither may "
                             "replace a run's own files or a file that imgclf did not export, "
                             "or lie inside the run's dataset")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip comparing the export's outputs with PyTorch's on random "
                             "images (by default a mismatch above 1e-4 is an error)")
    from imgclf.cli.common import add_verbosity

    add_verbosity(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgclf.export import export_model, sidecar_path

    path = export_model(args.run, args.format, args.out, check=args.check)
    print(f"exported {args.format} -> {path}")
    print(f"classes and preprocessing -> {sidecar_path(path)}")
    return 0
