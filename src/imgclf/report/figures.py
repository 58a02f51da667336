"""The pictures of a report: each run's PNG figures, and the gallery of its mistakes.

A figure comes from the run folder's PNG file. A missing one is drawn again from the data
beside it (history.csv, metrics.json, predictions.csv) in a temporary folder: the report
never writes into the folders it reports on. Every picture is embedded as a data URI.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.data.decode import DecodeError, decode_image
from imgclf.history import best_epoch
from imgclf.leaderboard import mapping
from imgclf.metrics import roc_curves
from imgclf.paths import (
    CONFUSION_MATRIX_FILE,
    HISTORY_FILE,
    LEARNING_CURVES_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    ROC_CURVES_FILE,
    unescaped,
)
from imgclf.plots import (
    plot_confusion_matrix,
    plot_histories,
    plot_history,
    plot_roc_curves,
    split_titles,
)
from imgclf.report import template as t
from imgclf.report.folders import Predictions, Run

log = logging.getLogger(__name__)

GALLERY_SIZE = 12
"""Wrong predictions shown per run, most confident first."""
THUMBNAIL = 128
"""Side of a gallery thumbnail: images are resized to a square, as the model saw them."""


def png_uri(path: Path) -> str:
    """A PNG file as a data URI."""
    return t.data_uri(path.read_bytes(), "image/png")


def histories_figure(histories: dict[str, list[dict]], tmp: Path) -> str:
    """The validation curves of every run, overlaid on one figure drawn into ``tmp``."""
    path = plot_histories(histories, tmp / "histories.png",
                          title="Validation curves of every run")
    return t.plot_figure(png_uri(path), "validation curves of every run",
                         "Validation accuracy and loss of every run, overlaid.")


def learning_curves_figure(run: Run, tmp: Path) -> str:
    def draw(path: Path) -> Path:
        if not run.history:
            raise ValueError("history.csv is missing or empty")
        train = mapping(run.config.get("train"))
        best = best_epoch(run.history, str(train.get("monitor") or "val_loss"),
                          str(train.get("mode") or "auto"), float(train.get("min_delta") or 0))
        return plot_history(run.history, path, best_epoch=best, title=run.name)

    return _run_figure(run, LEARNING_CURVES_FILE, tmp, draw, "learning curves",
                       HISTORY_FILE)


def confusion_figure(run: Run, tmp: Path) -> str:
    def draw(path: Path) -> Path:
        cm = (run.metrics or {}).get("confusion_matrix")
        if cm is None:
            raise ValueError("metrics.json has no confusion_matrix")
        title, _ = split_titles((run.metrics or {}).get("split"))
        return plot_confusion_matrix(np.asarray(cm), run.classes, path, title=title)

    return _run_figure(run, CONFUSION_MATRIX_FILE, tmp, draw, "confusion matrix",
                       METRICS_FILE)


def roc_figure(run: Run, tmp: Path) -> str:
    def draw(path: Path) -> Path:
        p = run.predictions
        if p is None:
            raise ValueError("predictions.csv is missing")
        unknown = sorted(set(p.labels) - set(p.classes))
        if unknown:
            raise ValueError(f"predictions.csv has labels without a probability column: "
                             f"{unknown}")
        labels = [p.classes.index(label) for label in p.labels]
        _, title = split_titles((run.metrics or {}).get("split"))
        return plot_roc_curves(roc_curves(labels, p.probs, p.classes), path, title=title)

    return _run_figure(run, ROC_CURVES_FILE, tmp, draw, "ROC curves", PREDICTIONS_FILE)


def _run_figure(run: Run, filename: str, tmp: Path, draw: Callable[[Path], Path], alt: str,
                source: str) -> str:
    """The run's PNG, or one drawn again from ``source`` when the PNG is missing."""
    path = run.folder / filename
    if path.is_file():
        try:
            return t.plot_figure(png_uri(path), f"{alt} of {run.name}")
        except OSError as exc:
            reason = f"{filename} could not be read ({exc.strerror or exc})"
    else:
        reason = f"{filename} is missing"
    try:
        drawn = draw(Path(tempfile.mkdtemp(dir=tmp)) / filename)
    except ValueError as exc:
        log.warning("run %s: %s and cannot be drawn again: %s", run.name, reason, exc)
        return t.paragraph(f"No {t.text(alt)}: {t.text(reason)} and cannot be drawn again "
                           f"({t.text(exc)}).", "muted")
    return t.plot_figure(png_uri(drawn), f"{alt} of {run.name}",
                         f"{t.text(reason)} in the run folder: drawn again from "
                         f"{t.text(source)}.")


# --- the gallery of mistakes ----------------------------------------------------------------


def mistakes_gallery(run: Run) -> str:
    """The run's wrong predictions as thumbnails, the most confident first."""
    p = run.predictions
    if p is None:
        return t.paragraph("No predictions.csv in the run folder.", "muted")
    wrong = [i for i in range(len(p.paths)) if p.labels[i] != p.predicted[i]]
    if not wrong:
        return t.paragraph(f"No mistakes: all {len(p.paths):,} evaluated images were "
                           "classified correctly.")
    wrong.sort(key=lambda i: -p.confidence[i])
    shown = wrong[:GALLERY_SIZE]
    unreadable: list[DecodeError] = []
    figures = [_gallery_item(run, p, i, unreadable) for i in shown]
    if unreadable:
        log.warning("run %s: %d of the %d gallery images could not be read (first: %s)",
                    run.name, len(unreadable), len(shown), unreadable[0])
    return (t.paragraph(f"{len(wrong):,} of {len(p.paths):,} evaluated images are wrong; "
                        f"the {len(shown)} most confident:")
            + '<div class="gallery">' + "".join(figures) + "</div>")


def _gallery_item(run: Run, p: Predictions, index: int, unreadable: list[DecodeError]) -> str:
    """One thumbnail with its labels; an unreadable image is shown as such (and listed)."""
    path = _locate(p.paths[index], run.folder)
    try:
        pixels = decode_image(path, size=(THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=88)
        picture = (f'<img src="{t.data_uri(buffer.getvalue(), "image/jpeg")}" '
                   f'alt="{escape(Path(p.paths[index]).name)}">')
    except DecodeError as exc:
        unreadable.append(exc)
        picture = f'<div class="unavailable">image unavailable: {t.text(exc.reason)}</div>'
    label = p.labels[index]
    p_true = (p.probs[index, p.classes.index(label)] if label in p.classes else None)
    caption = (
        f'<span class="true">true: <strong>{t.text(label)}</strong></span><br>'
        f'<span class="pred">predicted: <strong>{t.text(p.predicted[index])}</strong> '
        f"{t.percent(p.confidence[index])}</span><br>"
        + (f'<span class="muted">p(true class) {t.percent(p_true)}</span><br>'
           if p_true is not None else "")
        + f'<span class="file" title="{escape(p.paths[index])}">'
        f"{t.text(Path(p.paths[index]).name)}</span>"
    )
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def _locate(path_text: str, run_folder: Path) -> Path:
    """The image file a predictions.csv path names.

    It names them from the root; older versions of imgclf named them as training was given
    them, so such a relative path is relative to the directory ``imgclf train`` ran in:
    usually the current one or an ancestor of the run folder. The first of those where the
    file exists wins.
    """
    path = Path(unescaped(path_text))
    if path.is_absolute() or path.exists():
        return path
    for base in run_folder.resolve().parents:
        if (base / path).exists():
            return base / path
    return path
