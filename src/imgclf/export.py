"""Exporting a trained run to ONNX or TorchScript, and predicting with ONNX Runtime.

``export_model(run, "onnx")`` writes ``RUN/model.onnx`` (input ``images``: float32 RGB in the
0-255 range, NCHW, any batch size; output ``logits``) and ``RUN/model.onnx.json``, a sidecar
with the class names and preprocessing, so the file can be used without imgclf: resize to
``img_size`` with ``interpolation``, feed raw pixels (the model normalises them itself) and
take the softmax of the logits. ``"torchscript"`` writes ``RUN/model.torchscript.pt`` (load
with ``torch.jit.load``) and its sidecar the same way.

ONNX files are written and run as ``imgclf.models.onnx`` does (torch's TorchScript-based
exporter, TF-"same" padding fixed for the run's input size); torch has deprecated that
exporter, so every export is checked numerically against PyTorch unless ``check=False``.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

import numpy as np
import torch

from imgclf import __version__
from imgclf.errors import ConfigError, RunError
from imgclf.models.factory import Classifier, Preprocessing
from imgclf.models.onnx import (
    CHECK_BATCH,
    INPUT_NAME,
    ONNX_OPSET,
    OUTPUT_NAME,
    TRACE_BATCH,
    fixed_same_padding,
    onnx_session,
    quiet_torch_deprecations,
    random_images,
    write_onnx,
)
from imgclf.paths import (
    MODEL_FILE,
    TRAINING_CHECKPOINTS,
    begins_with,
    check_output_file,
    check_outside_other_runs,
    path_argument,
    read_mapping,
    run_datasets,
    write_text,
    written_whole,
)
from imgclf.predict import BasePredictor, checkpoint_file, load_model

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
DEFAULT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts")}
"""The names each format's export may have (``torch.jit.load`` takes any; .pt is usual)."""
MAGIC = {"onnx": "\x08", "torchscript": "PK\x03\x04"}
"""How each format's file begins: an ONNX model's first field (``ir_version``), and the zip
archive that ``torch.jit.save`` writes."""
TOLERANCE = 1e-4  # max |difference| of probabilities that ``check`` accepts


def sidecar_path(model_file: str | Path) -> Path:
    """The JSON file that travels with an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def sidecar_start(fmt: str) -> str:
    """How the sidecar that imgclf writes beside a ``fmt`` export begins (``_write_sidecar``)."""
    return f'{{\n  "format": "{fmt}",\n  "file": '


def _check_export_files(out: Path, fmt: str, datasets) -> None:
    """Refuse ``out`` and its sidecar as ``check_output_file`` refuses an output file. An
    existing export is imgclf's own, to be written over, when it begins as its format does
    and has the sidecar that imgclf writes beside it: the format alone does not tell it from
    a user's model."""
    sidecar = sidecar_path(out)
    ours = begins_with(sidecar, sidecar_start(fmt))
    check_output_file(out, SUFFIXES[fmt], datasets, DEFAULT_FILES[fmt],
                      starts=(MAGIC[fmt],) if ours else (), what="an exported model")
    check_output_file(sidecar, (), datasets, DEFAULT_FILES[fmt], starts=(sidecar_start(fmt),),
                      what="an export's sidecar")


def _write_torchscript(model: Classifier, example: torch.Tensor, path: Path) -> None:
    # trace, not script: timm models are not all scriptable, and the check below stands in
    # for trace's own check_trace.
    with quiet_torch_deprecations(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _run_exported(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """Logits from an exported file, the way a user of that format would get them."""
    if fmt == "onnx":
        return onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    with quiet_torch_deprecations():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(images).numpy()


def check_export(model: Classifier, path: Path, fmt: str, img_size: int) -> float:
    """Max |difference| of probabilities between ``model`` and its export on random images.

    Raises RunError when it exceeds ``TOLERANCE``.
    """
    images = random_images(CHECK_BATCH, img_size, seed=1)
    with torch.no_grad():
        expected = torch.softmax(model(images).float(), 1).numpy()
    got = softmax(_run_exported(path, fmt, images))
    if got.shape != expected.shape:
        raise RunError(f"the exported {fmt} model gives outputs of shape {got.shape} for "
                       f"{CHECK_BATCH} images, PyTorch gives {expected.shape}.")
    diff = float(np.abs(got - expected).max())
    if not diff <= TOLERANCE:  # also catches NaN
        raise RunError(f"the exported {fmt} model's probabilities differ from PyTorch's by "
                       f"up to {diff:.3g} (allowed {TOLERANCE:g}), so it was not saved. "
                       "Try the other format, or pass --no-check (check=False) to save it "
                       "anyway.")
    log.info("%s export matches PyTorch: max |probability difference| %.2g on %d random "
             "images (allowed %g)", fmt, diff, CHECK_BATCH, TOLERANCE)
    return diff


def export_model(run: str | Path, fmt: str = "onnx", out: str | Path | None = None,
                 check: bool = True) -> Path:
    """Export a finished run's final model to ``fmt`` ('onnx' or 'torchscript'); returns
    the file. A run without its model.pt (interrupted, or still training) is refused.

    Writes ``out`` (default ``RUN/model.onnx`` or ``RUN/model.torchscript.pt``) and its JSON
    sidecar (see ``sidecar_path``). With ``check`` the export is compared with PyTorch on
    random images first and nothing is written unless it matches.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not known; choose one of "
                          f"{', '.join(FORMATS)}.")
    ckpt = checkpoint_file(run)
    if ckpt.name in TRAINING_CHECKPOINTS:
        # RUN/model.onnx is what `predict --engine onnx RUN` uses: made from a checkpoint of
        # a run still training, it would silently outlive the run's final model.
        raise RunError(f"{ckpt} is a checkpoint saved during training, not the final "
                       f"{MODEL_FILE} of a finished run, and an export of it would go stale "
                       f"as the run goes on. Finish the run first (`imgclf train --resume "
                       f"--out {shlex.quote(str(ckpt.parent))}` for an interrupted one), then "
                       "export it.")
    out = path_argument(out, "out") if out is not None else ckpt.parent / DEFAULT_FILES[fmt]
    datasets = run_datasets(ckpt.parent)
    _check_export_files(out, fmt, datasets)
    # `predict --engine onnx` that run would answer with this run's model and classes.
    check_outside_other_runs(out, ckpt.parent,
                             "export into this run's folder or outside any run folder",
                             ConfigError)
    model, prep, classes, meta = load_model(ckpt)
    model = model.cpu().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = write_onnx if fmt == "onnx" else _write_torchscript
    with written_whole(out) as tmp:
        example = random_images(TRACE_BATCH, prep.img_size, seed=0)
        writer(fixed_same_padding(model, example), example, tmp)
        diff = check_export(model, tmp, fmt, prep.img_size) if check else None
        # The sidecar first: an export stopped in between leaves no model without the
        # sidecar that tells its classes and preprocessing, and that it is imgclf's.
        _write_sidecar(out, fmt, classes, prep, meta, diff)
    log.debug("exported %s to %s (classes and preprocessing in %s)",
              meta["model_config"]["name"], out, sidecar_path(out).name)
    return out


DECODING = ("as imgclf.data.decode.decode_image: RGB, EXIF orientation applied, resized to "
            "the preprocessing's img_size square (aspect ratio not kept) with its "
            "interpolation and Pillow's reducing_gap=3.0; a JPEG is first reduced in Pillow's "
            "draft mode to no less than that size. A plain resize of the full image gives "
            "probabilities a few hundredths apart.")
"""How the exported model's input images were made: what a caller outside imgclf repeats."""


def _write_sidecar(out: Path, fmt: str, classes: list[str], prep: Preprocessing, meta: dict,
                   diff: float | None) -> None:
    size = prep.img_size
    info = {  # beginning with format and file, as ``sidecar_start`` expects
        "format": fmt,
        "file": out.name,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32",
                  "layout": "NCHW", "colour": "RGB",
                  "range": "0-255, not normalised: the model applies mean and std itself",
                  "decoding": DECODING},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(classes)],
                   "meaning": "logits; softmax over axis 1 gives class probabilities"},
        "classes": list(classes),
        "preprocessing": prep.to_dict(),
        "model": meta.get("model_config"),
        "tta": bool(meta.get("tta", False)),
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "check_max_abs_diff": diff,
        "imgclf_version": __version__,
        "torch_version": torch.__version__,
    }
    write_text(sidecar_path(out), json.dumps(info, indent=2) + "\n")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 of an exported model's logits, as PyTorch takes it."""
    return torch.softmax(torch.from_numpy(logits).float(), 1).numpy()


class OnnxPredictor(BasePredictor):
    """A run's ``model.onnx`` ready to classify image files with ONNX Runtime on the CPU.

    Same interface as ``imgclf.predict.Predictor``; ``run`` is the run folder or the
    ``.onnx`` file itself (its ``.json`` sidecar must sit next to it). ``threads`` defaults
    to the cores this process may use.
    """

    def __init__(self, run: str | Path, threads: int | None = None):
        path = Path(run)
        if not path.exists():
            raise RunError(f"run folder or ONNX file {path} does not exist.")
        if path.is_file() and path.suffix.lower() != ".onnx":
            raise RunError(f"{path} is not an ONNX file; give the run folder or its "
                           f"{DEFAULT_FILES['onnx']}.")
        model_file = path / DEFAULT_FILES["onnx"] if path.is_dir() else path
        # What `imgclf export` takes: a finished run, or one still training (its best.pt).
        exportable = any((model_file.parent / name).is_file()
                         for name in (MODEL_FILE, *TRAINING_CHECKPOINTS))
        if not model_file.exists() and exportable:
            named = sorted(str(p) for p in model_file.parent.iterdir()
                           if p.suffix.lower() == ".onnx" and p.is_file())  # --out, say
            other = f", or give the export it holds itself ({', '.join(named)})" if named else ""
            raise RunError(f"{path} has no {DEFAULT_FILES['onnx']}; create it with "
                           f"`imgclf export {shlex.quote(str(path))} --format onnx`{other}.")
        if not model_file.exists():
            raise RunError(f"{path} is not a run folder and has no {DEFAULT_FILES['onnx']}: "
                           "give the .onnx file itself, or the folder of the run it was "
                           "exported from.")
        self.folder = model_file.parent
        self.datasets = run_datasets(self.folder)
        if exportable:
            export_again = (f"export again with `imgclf export "
                            f"{shlex.quote(str(model_file.parent))} --format onnx`")
        else:  # a copy of the export, away from its run
            export_again = ("export again from its run folder (`imgclf export RUN_DIR "
                            "--format onnx --out FILE`), or copy the sidecar along with it")
        info_file = sidecar_path(model_file)
        if not info_file.exists():
            raise RunError(f"{info_file} (classes and preprocessing of {model_file.name}) is "
                           f"missing; {export_again}.")
        _, self.meta = read_mapping(
            info_file, json.loads, json.JSONDecodeError, "JSON",
            f"the classes and preprocessing of {model_file.name}",
            invalid_fix=export_again, type_fix=export_again)
        try:
            self.classes = list(self.meta["classes"])
            self.prep = Preprocessing.from_dict(self.meta["preprocessing"])
        except (KeyError, TypeError, ValueError):
            raise RunError(f"{info_file} lacks the classes or preprocessing of "
                           f"{model_file.name}, or holds them damaged; {export_again}.") from None
        self.session = onnx_session(model_file, threads, fix=export_again)

    def _probs(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        return softmax(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])
