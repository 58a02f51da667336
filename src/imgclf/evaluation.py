"""Evaluating a trained classifier on labelled images, and writing what it found.

Writes ``metrics.json``, ``predictions.csv`` (one row per image, with probabilities) and
the plots (learning curves when a history is given, confusion matrix, ROC curves) into
the output folder. Only rank 0 writes; every rank takes part in inference.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch

from imgclf.config import load_config
from imgclf.data.layout import Split, detect_layout, scan_split, shown
from imgclf.data.prepare import (
    decode_split,
    prepare_run_data,
    training_changes,
    write_skipped,
)
from imgclf.data.transforms import tta_average
from imgclf.engine import dist
from imgclf.engine.checkpoints import load_checkpoint
from imgclf.engine.loop import predict_array
from imgclf.engine.runtime import Runtime
from imgclf.errors import ConfigError, DataError, ImgclfError, RunError
from imgclf.metrics import compute_metrics, roc_curves
from imgclf.paths import (
    CONFIG_FILE,
    CONFUSION_MATRIX_FILE,
    LAST_CHECKPOINT,
    LEARNING_CURVES_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    ROC_CURVES_FILE,
    SKIPPED_FILE,
    absolute,
    check_output_folder,
    check_outside_other_runs,
    dataset_paths,
    enclosing_run,
    open_for_writing,
    path_argument,
    probability_columns,
    read_run_metrics,
    write_text,
)
from imgclf.plots import plot_confusion_matrix, plot_history, plot_roc_curves, split_titles
from imgclf.predict import Predictor, run_folder

log = logging.getLogger(__name__)

EVALUATION_FILES = frozenset({METRICS_FILE, PREDICTIONS_FILE, LEARNING_CURVES_FILE,
                              CONFUSION_MATRIX_FILE, ROC_CURVES_FILE, SKIPPED_FILE})
"""What ``write_evaluation`` writes: a folder of only these may be written again."""


def choose_tta(setting: str, model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
               rt: Runtime) -> tuple[bool, dict | None]:
    """Whether evaluation and prediction average in the mirror image (``train.tta``):
    ``on`` and ``off`` as said; ``auto`` when that raises accuracy on ``images`` and
    ``labels`` (the validation split). Returns the choice and, for ``auto``, both accuracies."""
    if setting != "auto":
        return setting == "on", None
    views: list[np.ndarray] = []

    def probs_of(view: np.ndarray) -> np.ndarray:
        views.append(predict_array(model, view, rt)[0])
        return views[-1]

    averaged = tta_average(probs_of, images, True)
    check = {name: round(float((p.argmax(1) == labels).mean()), 6)
             for name, p in (("accuracy", views[0]), ("accuracy_tta", averaged))}
    use = check["accuracy_tta"] > check["accuracy"]
    log.info("mirror-image test-time augmentation: validation accuracy %.4f without, %.4f "
             "with: %s", check["accuracy"], check["accuracy_tta"],
             "used for evaluation and prediction" if use else "not used")
    return use, check


def _warn_of_absent_classes(metrics: dict, classes: list[str], split: str) -> None:
    """Say how classes without images in the split count: the macro averages run over the
    classes present or predicted (scikit-learn's), so one that is predicted counts with
    recall and F1 of 0, and one that is not is left out, as balanced accuracy leaves both."""
    absent = [c for c in classes if metrics["per_class"][c]["support"] == 0]
    if not absent:
        return
    predicted = [shown(c) for c in absent if metrics["per_class"][c]["fp"] > 0]
    left_out = [shown(c) for c in absent if metrics["per_class"][c]["fp"] == 0]
    ways = []
    if predicted:
        ways.append(f"{', '.join(predicted)} (predicted for some images) "
                    f"{'counts' if len(predicted) == 1 else 'count'} with recall and F1 of 0")
    if left_out:
        ways.append(f"{', '.join(left_out)} {'is' if len(left_out) == 1 else 'are'} left out")
    log.warning("the %s split has no images of %s: in the macro averages %s (balanced "
                "accuracy leaves them all out)", split, ", ".join(map(shown, absent)),
                "; ".join(ways))


def write_evaluation(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    paths: list[Path],
    classes: list[str],
    rt: Runtime,
    out_dir: Path,
    split: str,
    history: list[dict] | None = None,
    extra: dict | None = None,
    tta: bool = False,
    best: int | None = None,
) -> dict:
    """Evaluate on one split and write metrics, predictions and plots to ``out_dir``."""
    probs, speed = predict_array(model, images, rt, tta=tta)
    metrics = compute_metrics(labels, probs, classes)
    metrics["split"] = split
    metrics["tta"] = tta
    if dist.is_main():
        _warn_of_absent_classes(metrics, classes, split)
    metrics["inference_images_per_second"] = round(speed, 1)
    metrics["compute_dtype"] = rt.precision  # how it computed; "precision" is a score
    metrics.update(extra or {})
    if not dist.is_main():
        return metrics
    with open_for_writing(out_dir / PREDICTIONS_FILE, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "predicted", "confidence",
                         *probability_columns(classes)])
        for path, y, p in zip(paths, labels, probs, strict=False):
            k = int(p.argmax())
            writer.writerow([str(absolute(path)), classes[int(y)], classes[k], f"{p[k]:.6f}",
                             *(f"{v:.6f}" for v in p)])
    if history:
        plot_history(history, out_dir / LEARNING_CURVES_FILE, best_epoch=best)
    confusion_title, roc_title = split_titles(split)
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), classes,
                          out_dir / CONFUSION_MATRIX_FILE, title=confusion_title)
    # Written even without a curve (it then says why), so that none from an earlier
    # evaluation in this folder stays beside these figures.
    plot_roc_curves(roc_curves(labels, probs, classes), out_dir / ROC_CURVES_FILE,
                    title=roc_title)
    # Last: a run (or evaluation) folder with metrics.json holds all its files, so an
    # interruption before this point leaves the run unfinished, to be resumed.
    write_text(out_dir / METRICS_FILE, json.dumps(metrics, indent=2))
    log.info("%s accuracy %.4f, balanced %.4f, macro F1 %.4f (%d images%s)", split,
             metrics["accuracy"], metrics["balanced_accuracy"], metrics["f1_macro"],
             metrics["n_samples"], ", each averaged with its mirror image" if tta else "")
    return metrics


def _training_folder(run_dir: Path) -> Path | None:
    """The folder the run in ``run_dir`` trained on (None when that cannot be told: no
    config.yaml, or its dataset has moved). A damaged config.yaml raises RunError: the
    evaluation could not tell its images from the training images."""

    config_file = run_dir / CONFIG_FILE
    if not config_file.is_file():
        return None
    try:
        d = load_config(config_file).data
    except ConfigError:
        return None  # settings this version of imgclf does not know
    try:
        return detect_layout(*dataset_paths(d.data, d.train)).train
    except (ImgclfError, OSError, ValueError):
        return None


def _check_same_evaluation(out_dir: Path, root: Path, run_dir: Path | None) -> None:
    """Refuse to overwrite an evaluation of other images, or by another run than
    ``run_dir`` (None: the folder is the run's own, wherever the run has moved): the
    default folder is named after the split, so a second dataset's test split would
    otherwise replace the first's, and ``--out`` may name any folder outside a run."""
    if not (out_dir / METRICS_FILE).is_file():
        return
    try:
        earlier = read_run_metrics(out_dir / METRICS_FILE)
        images, run = str(earlier["data"]), earlier.get("run")
    except (RunError, KeyError):
        return  # not an evaluation that names its images
    if Path(images).resolve() != root.resolve():
        raise RunError(f"{out_dir} holds the evaluation of {images}; choose another --out "
                       f"for {root}, or delete that folder.")
    if run is not None and run_dir is not None and not _same(Path(run), run_dir):
        raise RunError(f"{out_dir} holds the evaluation of the run in {run}; choose another "
                       f"--out for {run_dir}, or delete that folder.")


def evaluate_folder(run: str | Path, data: str | Path, split: str | None = None,
                    out: str | Path | None = None, device: str = "auto",
                    tta: bool | None = None) -> tuple[dict, Path]:
    """Evaluate a trained run on a labelled folder; returns (metrics, output folder).
    ``tta`` averages each image's probabilities with its mirror image's (None: as the run
    chose when it was trained)."""

    if split not in (None, "test", "val", "train"):
        raise ConfigError(f"split must be test, val or train, got {split!r}.")
    data = path_argument(data, "data")
    out = path_argument(out, "out") if out is not None else None
    predictor = Predictor(run, device=device)
    tta = predictor.resolve_tta(tta)
    run_dir = run_folder(run)  # RUN/model.pt may be given
    name, root, held_out = _chosen_split(data, split, run_dir, predictor.classes,
                                         predictor.meta.get("data"))
    out_dir = Path(out) if out else run_dir / f"evaluate-{name}"
    if _same(out_dir, run_dir):  # refused below too, as a folder of other files: say why
        raise RunError(f"{out_dir} is the run's own folder; an evaluation goes into a folder "
                       f"of its own: leave out --out for {run_dir / f'evaluate-{name}'}, or "
                       "choose another.")
    check_output_folder(out_dir, (data, *predictor.datasets),
                        lambda names: names <= EVALUATION_FILES)
    # The report shows a run's evaluation folders as that run's.
    check_outside_other_runs(out_dir, run_dir,
                             f"evaluate into {run_dir} (the default) or outside any run folder")
    inside = enclosing_run(out_dir)
    labelled = (held_out if held_out is not None
                else scan_split(name, root, predictor.classes, source="the model"))
    # After the scan, so that classes the model lacks are named first.
    _check_same_evaluation(out_dir, root, None if _same(inside, run_dir) else run_dir)
    if not len(labelled):
        raise DataError(f"no readable images in {root}.")
    images, labels, _ = decode_split(labelled, predictor.prep.img_size,
                                     predictor.prep.interpolation)
    write_skipped([(name, s) for s in labelled.skipped], out_dir / SKIPPED_FILE)
    metrics = write_evaluation(predictor.model, images, labels, labelled.paths,
                               predictor.classes, predictor.rt, out_dir, split=name,
                               extra={"data": str(absolute(root)),
                                      "run": str(absolute(run_dir)),
                                      "model_file": predictor.meta["model_file"].name,
                                      "skipped_files": len(labelled.skipped)},
                               tta=tta)
    return metrics, out_dir


def _chosen_split(data: Path, split: str | None, run_dir: Path, classes: list[str],
                  began: dict | None) -> tuple[str, Path, Split | None]:
    """What ``evaluate_folder`` evaluates of ``data``: the split's name and folder, and, for
    the run's own training folder without a val split, the validation images the run held
    out of it (else None; ``began`` is its checkpoint's record of its data). Warns when
    the images are ones the model learnt from."""
    trained_on = _training_folder(run_dir)
    layout = detect_layout(data, need_train=False)
    for note in layout.notes:
        log.warning("%s", note)
    held_out: Split | None = None
    if layout.kind == "single":  # a folder of classes: all of it, named after it
        name, root = absolute(layout.train).name, layout.train
    else:
        name = split or next(n for n in ("test", "val", "train") if getattr(layout, n))
        root = getattr(layout, name)
    if split == "val" and root in (None, layout.train) and _same(layout.train, trained_on):
        # The run's own training folder, with no val/: the images it held out, drawn again.
        held_out, how = _held_out_validation(run_dir, classes, began)
        name, root = "val", layout.train
        log.info("%s has no val split: evaluating the run's validation images, %s", data, how)
    elif layout.kind == "single" and split is not None:
        log.warning("%s has no split folders: evaluating all of it, not a %s split",
                    data, split)
    elif root is None:
        raise DataError(f"{data} has no {name} split; found: {', '.join(layout.splits())}.")
    if held_out is None and _same(root, trained_on):
        log.warning("%s is the folder %s was trained on: these figures are on images the "
                    "model has learnt from (with any validation images it held out of that "
                    "folder), not on new ones", root, run_dir)
    elif name == "train" and split is None:  # not the run's own: maybe other images
        log.warning("%s has no test or val split: evaluating its train split (if it holds "
                    "images the model learnt from, the figures overstate how it does on new "
                    "ones)", data)
    return name, root, held_out


def _same(folder: Path | None, other: Path | None) -> bool:
    return folder is not None and other is not None and folder.resolve() == other.resolve()


def _held_out_validation(run_dir: Path, classes: list[str],
                         began: dict | None) -> tuple[Split, str]:
    """The validation images that the run in ``run_dir`` split off its training folder, drawn
    again as training drew them (same files, fraction and seed), and how they were drawn.
    RunError when they are not the run's: its checkpoint's record of the data it trained
    on (``began``; None in older checkpoints) names other files or another split."""
    data = prepare_run_data(load_config(run_dir / CONFIG_FILE), classes=classes)
    key = "trained_on" if began is not None and "trained_on" in began else "digest"  # older
    now = data.contents()
    if began is not None and began.get(key) != now[key]:
        raise RunError(f"the validation images of {run_dir} cannot be drawn again: the files "
                       "of its training folder, or how imgclf splits them, changed since the "
                       f"run trained{training_changes(_listed(run_dir, began), now)}, so they "
                       "would not be the images it held out. Evaluate on a test split or a "
                       "folder of new images instead.")
    return data.splits["val"], data.val_source


def _listed(run_dir: Path, began: dict) -> dict | None:
    """The run's last.pt's record of its data, with the file listing that model.pt leaves
    out, when it is the record of the same training files as ``began`` (model.pt's)."""
    try:
        last = load_checkpoint(run_dir / LAST_CHECKPOINT).get("data")
    except (RunError, OSError):  # no last.pt, or not one imgclf can read
        return None
    same = isinstance(last, dict) and "trained_on" in began \
        and last.get("trained_on") == began["trained_on"]
    return last if same else None
