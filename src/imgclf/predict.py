"""Loading a trained run and predicting on new images.

``load(run_dir)`` gives a ``Predictor`` holding the final model (``model.pt``), its classes
and preprocessing. Unreadable files get an ``error`` on their row, never an exception.
``BasePredictor`` holds what every inference engine shares (finding and decoding files,
batching, the output file); ``imgclf.export.OnnxPredictor`` is the ONNX Runtime one.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.config import INFERENCE_BATCH, whole_number
from imgclf.data.decode import DecodeError, decode_image
from imgclf.data.layout import RUN_FOLDER
from imgclf.data.prepare import find_unlabelled
from imgclf.data.transforms import tta_average
from imgclf.engine.checkpoints import load_checkpoint
from imgclf.engine.loop import predict_array
from imgclf.engine.runtime import Runtime, resolve_runtime
from imgclf.errors import ConfigError, RunError
from imgclf.machine import available_cores
from imgclf.models.factory import Classifier, Preprocessing, model_from_checkpoint
from imgclf.paths import (
    MODEL_FILE,
    TRAINING_CHECKPOINTS,
    absolute,
    check_output_file,
    check_outside_other_runs,
    enclosing_run,
    folder_holding,
    is_run_folder,
    open_for_writing,
    path_argument,
    probability_columns,
    run_datasets,
)

log = logging.getLogger(__name__)

def checkpoint_file(run: str | Path) -> Path:
    """The model file of a run folder (or the checkpoint file itself). An exported model
    (``.onnx``, ``.torchscript.pt``) is refused with a hint on how to use it."""
    path = path_argument(run, "a run (its folder or model file)", RunError)
    if path.is_dir():
        for name in (MODEL_FILE, *TRAINING_CHECKPOINTS):
            if (path / name).exists():
                return path / name
        raise RunError(f"{path} holds no model.pt, best.pt or last.pt: is it an imgclf run "
                       "folder? Train one with `imgclf train`.")
    if not path.exists():
        raise RunError(f"run folder or checkpoint {path} does not exist.")
    name = path.name.lower()
    if name.endswith(".onnx"):
        raise RunError(f"{path} is an ONNX export, not an imgclf checkpoint: predict with it "
                       f"by `imgclf predict {shlex.quote(str(path))} IMAGES --engine onnx`, or "
                       f"give the run folder or its {MODEL_FILE}.")
    if name.endswith((".torchscript.pt", ".torchscript", ".ts")):
        raise RunError(f"{path} is a TorchScript export, not an imgclf checkpoint: load it "
                       f"with torch.jit.load, or give imgclf the run folder or its "
                       f"{MODEL_FILE}.")
    return path


def load_model(run: str | Path) -> tuple[Classifier, Preprocessing, list[str], dict]:
    """Rebuild a run's model from its checkpoint: (model, preprocessing, classes, meta);
    meta holds the checkpoint's other entries and ``model_file``, the file read. A run
    folder without its final model.pt gives the checkpoint training saved last, with a
    warning."""
    path = checkpoint_file(run)
    ckpt = load_checkpoint(path)
    if path.name in TRAINING_CHECKPOINTS and Path(run).is_dir():
        trained = ("" if ckpt.get("history") else
                   " (no epoch had finished: its weights are the untrained starting point)")
        log.warning("%s has no %s: its training has not finished, so %s, saved during "
                    "training, is used%s; its results will differ from the finished run's",
                    run, MODEL_FILE, path.name, trained)
    model, prep = model_from_checkpoint(ckpt)
    model.load_state_dict(ckpt["model"])
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler")}
    meta["model_file"] = path
    return model, prep, list(ckpt["classes"]), meta


@dataclass
class Prediction:
    """One file's prediction: its class, that class's probability and every class's (in
    the model's class order), or the reason it could not be read."""

    path: Path
    predicted: str | None
    confidence: float | None
    probs: np.ndarray | None
    error: str | None = None

    @property
    def label(self) -> str | None:
        """The predicted class, ``predicted`` (its earlier name)."""
        return self.predicted


class Predictions(list):
    """``predict``'s ``Prediction`` of each file, a list, which knows the ``folders`` that
    were walked for them: ``write`` writes no predictions there (a later walk would meet
    the file among the images)."""

    def __init__(self, predictions=(), folders=()):
        super().__init__(predictions)
        self.folders = tuple(folders)


PREDICTIONS_START = ("path,predicted,confidence,", '[\n {\n  "path": ')
"""How a predictions file begins, as CSV and as JSON: such a file may be written again."""


def run_folder(run: str | Path) -> Path:
    """The run folder of ``run``: the folder itself, or the folder of a file in it."""
    return Path(run) if Path(run).is_dir() else Path(run).parent


def output_format(path: str | Path, datasets=(), run: Path | None = None,
                  inputs=()) -> str:
    """"csv" or "json": the format a predictions file named ``path`` is written in.

    ConfigError for a name that predictions are not written to: a folder, another suffix,
    a file that imgclf wrote into a run or compare folder, a place inside one of
    ``datasets``, or an existing file that is not earlier predictions (``check_output_file``),
    or a place inside one of the folders predicted, ``inputs``, but for one in the folder of
    the run ``run`` (or of a model in it) inside them all (which their walk leaves out);
    RunError for a place inside the folder of another run than ``run``, the predicting one.
    """
    # Another run's folder first: the next check's advice would name a file in it.
    check_outside_other_runs(path, run, "write predictions into the predicting run's folder "
                                        "or outside any run folder")
    path = check_output_file(path, (".csv", ".json"), datasets, example="predictions.csv",
                             starts=PREDICTIONS_START, what="a predictions file")
    own = None if run is None else run if is_run_folder(run) else enclosing_run(run)
    in_own = own is not None and folder_holding(path, [own]) is not None
    walked = [folder for folder in inputs if folder_holding(path, [folder]) is not None
              and not (in_own and folder_holding(own, [folder]) is not None)]
    if walked:
        raise ConfigError(f"{path} would be inside {walked[0]}, a folder whose images are "
                          "predicted; imgclf never writes among the images it reads: "
                          "choose a place outside it.")
    return path.suffix.lower().lstrip(".")


def walked_folders(paths) -> list[Path]:
    """The folders among the files and folders given to ``predict``, which it walks;
    ConfigError for an empty path among them."""
    paths = [path_argument(p, "an image or folder to predict") for p in paths]
    return [absolute(p) for p in paths if p.is_dir()]


class BasePredictor:
    """Classifying image files with some engine: decoding, batching and writing are shared.

    A subclass sets ``classes``, ``prep`` and ``meta`` (what the run saved with its model)
    and implements ``_probs``. A ``tta`` argument of True or False overrides the run's
    choice; None keeps it.
    """

    classes: list[str]
    prep: Preprocessing
    meta: dict
    datasets: list[Path]
    """The run's training data, where predictions are never written."""
    folder: Path
    """The folder of the run (or of the exported model): predictions may be written there,
    not into another run's."""

    @property
    def tta(self) -> bool:
        """The run's choice of mirror-image test-time augmentation (``train.tta``)."""
        return bool(self.meta.get("tta", False))

    def resolve_tta(self, tta: bool | None) -> bool:
        """``tta`` when given, else the run's choice."""
        if tta is None:
            return self.tta
        if not isinstance(tta, bool | np.bool_):
            raise ConfigError(f"tta must be True, False or None (as the run chose), got "
                              f"{tta!r}.")
        return bool(tta)

    def _decode(self, path: Path) -> np.ndarray | str:
        try:
            return decode_image(path, (self.prep.img_size, self.prep.img_size),
                                self.prep.interpolation)
        except DecodeError as exc:
            return exc.reason

    def _probs(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) for uint8 images (N, H, W, 3), already checked."""
        raise NotImplementedError

    def predict_arrays(self, images: np.ndarray, tta: bool | None = None,
                       batch_size: int = INFERENCE_BATCH) -> np.ndarray:
        """Probabilities (N, classes) for RGB images as ``predict`` decodes files: uint8
        pixel values 0-255, shape (N, img_size, img_size, 3) with the run's
        ``prep.img_size``, run ``batch_size`` at a time. Any other array raises ConfigError
        (a ValueError) saying what to change (floats are refused rather than guessed at:
        0-1 and 0-255 floats look alike). ``tta`` averages a mirrored view."""
        images = self._check_images(images)
        batch_size, tta = checked_batch_size(batch_size), self.resolve_tta(tta)
        if not len(images):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate([tta_average(self._probs, images[start:start + batch_size], tta)
                               for start in range(0, len(images), batch_size)])

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        size = self.prep.img_size
        wanted = f"uint8 RGB images of shape (N, {size}, {size}, 3)"
        if images.ndim != 4:
            hint = ""
            if images.ndim == 3:
                hint = (" (one image: pass images[None])" if images.shape[-1] == 3 else
                        " (greyscale images? give them three channels: "
                        "np.repeat(images[..., None], 3, axis=-1))")
            raise ConfigError(f"images: expected {wanted}, got an array of shape "
                              f"{images.shape}{hint}.")
        if images.shape[3] != 3:
            fix = ("the channels come first: move them last with "
                   "images.transpose(0, 2, 3, 1)" if images.shape[1] == 3 else
                   "convert them to RGB first, e.g. with PIL's image.convert('RGB')")
            raise ConfigError(f"images: expected {wanted}, got {images.shape[3]} channel(s) "
                              f"on the last axis (shape {images.shape}); {fix}.")
        if images.shape[1:3] != (size, size):
            raise ConfigError(f"images: this model takes {size}x{size} images, got "
                              f"{images.shape[1]}x{images.shape[2]} (height x width); resize "
                              f"them to {size}x{size} with {self.prep.interpolation} "
                              "interpolation (for image files, imgclf.data.decode."
                              f"decode_image(path, ({size}, {size}), "
                              f"{self.prep.interpolation!r}) gives exactly what predict() "
                              "sees).")
        if images.dtype != np.uint8:
            whole = "for whole numbers 0-255 pass images.astype(np.uint8)"
            fix = {"i": whole, "u": whole,
                   "f": "for floats in 0-1 pass (images * 255).round().astype(np.uint8)",
                   "b": "for a mask of black and white pass (images * 255).astype(np.uint8)",
                   }.get(images.dtype.kind, "pass pixel values 0-255 as np.uint8")
            raise ConfigError(f"images: expected {wanted} with values 0-255, got dtype "
                              f"{images.dtype}; {fix}.")
        return images

    def predict(self, paths, batch_size: int = INFERENCE_BATCH,
                tta: bool | None = None) -> Predictions:
        """Predict every image among ``paths`` (a file or folder, or any iterable of them;
        folders are walked recursively): one ``Prediction`` per file, each file once, in
        the order found."""
        batch_size = checked_batch_size(batch_size)
        in_memory = ("predict takes image files and folders (str or Path); for images already "
                     "in memory use predict_arrays (uint8 arrays of shape (N, size, size, 3))")
        if isinstance(paths, np.ndarray):
            if paths.dtype.kind in "biufc":
                raise ConfigError(f"{in_memory}, got an array of {paths.dtype} values.")
            paths = paths.ravel().tolist()  # file names, as pandas' .to_numpy() gives them
        if isinstance(paths, str | os.PathLike | bytes) or not isinstance(paths, Iterable):
            paths = [paths]
        paths = list(paths)  # a set, a generator, a pandas Series
        for item in paths:
            if not isinstance(item, str | os.PathLike):
                raise ConfigError(f"{in_memory}, got {type(item).__name__}.")
        walked = walked_folders(paths)
        # Files found in folders that are not images by name or content (notes, CSVs) are
        # left out, as the training data's are, and so are run folders (walking them warned);
        # a damaged image is listed with its error.
        found, others = [], 0
        left_out = ("hidden or system", "not an image", RUN_FOLDER)
        for path, reason in find_unlabelled(paths):
            if reason is None or not reason.startswith(left_out):
                found.append((path, reason))
            else:
                others += reason.startswith("not an image")
        if others:
            log.info("%d file(s) that are not images left out", others)
        files = [path for path, reason in found if reason is None]
        done: dict[Path, Prediction] = {}
        with ThreadPoolExecutor(max_workers=available_cores()) as pool:
            for start in range(0, len(files), batch_size):
                chunk = files[start:start + batch_size]
                decoded = list(pool.map(self._decode, chunk))
                good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
                probs = (self.predict_arrays(np.stack([decoded[i] for i in good]), tta,
                                             batch_size) if good
                         else np.zeros((0, len(self.classes))))
                by_index = dict(zip(good, probs, strict=False))
                for i, path in enumerate(chunk):
                    if i in by_index:
                        p = by_index[i]
                        k = int(p.argmax())
                        done[path] = Prediction(path, self.classes[k], float(p[k]), p)
                    else:
                        done[path] = Prediction(path, None, None, None, decoded[i])
        return Predictions([done[path] if reason is None
                            else Prediction(path, None, None, None, reason)
                            for path, reason in found], walked)

    def write(self, predictions: list[Prediction], path: str | Path) -> Path:
        """Write ``predictions`` to ``path``: JSON for a ``.json`` name (one record per
        file, probabilities by class), CSV for a ``.csv`` one (path, predicted, confidence, a
        probability column per class as ``probability_columns`` names them, then error).
        Parent folders are created; the file appears whole or not at all, and never in a
        folder that ``predict`` walked for them (``Predictions.folders``; for another list of
        them, a folder holding their files)."""
        path = Path(path)
        # The folders walked for them; for a list made from them (filtered, sliced), the
        # folders holding their files.
        walked = (predictions.folders if isinstance(predictions, Predictions)
                  else {Path(p.path).parent for p in predictions})
        kind = output_format(path, self.datasets, self.folder, walked)
        with open_for_writing(path, newline="") as fh:
            if kind == "json":
                json.dump([self._record(p) for p in predictions], fh, indent=1,
                          ensure_ascii=False)
                fh.write("\n")
            else:
                writer = csv.writer(fh)
                writer.writerow(["path", "predicted", "confidence",
                                 *probability_columns(self.classes), "error"])
                for p in predictions:
                    if p.error:
                        writer.writerow([str(p.path), "", "", *[""] * len(self.classes),
                                         p.error])
                    else:
                        writer.writerow([str(p.path), p.predicted, f"{p.confidence:.6f}",
                                         *(f"{v:.6f}" for v in p.probs), ""])
        return path

    def _record(self, p: Prediction) -> dict:
        if p.error:
            return {"path": str(p.path), "predicted": None, "confidence": None,
                    "probabilities": None, "error": p.error}
        return {"path": str(p.path), "predicted": p.predicted, "confidence": round(p.confidence, 6),
                "probabilities": {c: round(float(v), 6) for c, v in zip(self.classes, p.probs,
                                                                          strict=True)},
                "error": None}


class Predictor(BasePredictor):
    """A trained model ready to classify image files, run by PyTorch."""

    def __init__(self, run: str | Path, device: str = "auto"):
        self.model, self.prep, self.classes, self.meta = load_model(run)
        self.folder = run_folder(run)
        self.datasets = run_datasets(self.folder)
        self.rt: Runtime = resolve_runtime(device, "off", channels_last=True)
        self.model = self.rt.place(self.model)

    def _probs(self, images: np.ndarray) -> np.ndarray:
        # One forward pass over what the caller hands over, as ONNX Runtime's predictor
        # makes: ``predict``'s batch size is the model's.
        return predict_array(self.model, images, self.rt, batch_size=max(len(images), 1))[0]


def checked_batch_size(value) -> int:
    """A batch size as given to ``predict`` or ``predict_arrays``, checked."""
    return whole_number(value, "batch size")


def load(run: str | Path, device: str = "auto") -> Predictor:
    """A ``Predictor`` for a trained run folder."""
    return Predictor(run, device=device)
