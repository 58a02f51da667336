"""Figures for runs and evaluations, written as PNG files.

Each function builds a :class:`matplotlib.figure.Figure` on an Agg canvas, saves it to
``path`` (creating parent folders) and returns the path. pyplot is never imported: its
global figure registry leaks memory in long jobs and picks an interactive backend on a
desktop, neither of which a library should do.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imgclf.paths import written_whole

logger = logging.getLogger(__name__)

DPI = 100
# Above this many classes, per-cell numbers in a confusion matrix are unreadable.
MAX_ANNOTATED_CLASSES = 30
# Class names longer than this are cut on a confusion matrix's axes.
TICK_LABEL_WIDTH = 28

# matplotlib's warning for a character its font cannot draw (CJK class names in DejaVu Sans).
_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")

_HISTORY_PANELS = (("accuracy", "val_accuracy", "Accuracy"), ("loss", "val_loss", "Loss"))


def plot_history(
    history: Sequence[Mapping[str, float]],
    path: str | os.PathLike[str],
    best_epoch: int | None = None,
    title: str | None = None,
) -> Path:
    """Training curves of one run: accuracy and loss panels, train and validation.

    ``history`` rows carry ``epoch``, ``loss``, ``accuracy``, ``val_loss`` and
    ``val_accuracy``; any ``val_*`` key may be missing, ``None`` or NaN (no validation that
    epoch), which leaves a gap rather than a misleading line. ``best_epoch`` is drawn as a
    labelled vertical line on both panels.

    Raises:
        ValueError: ``history`` is empty.
    """
    if not history:
        raise ValueError("history is empty; expected one mapping per epoch.")
    epochs = _epochs(history)

    fig = _new_figure(figsize=(11, 4.2))
    for ax, (train_key, val_key, label) in zip(fig.subplots(1, 2), _HISTORY_PANELS, strict=True):
        plotted = []
        for key, name in ((train_key, "train"), (val_key, "validation")):
            values = _column(history, key)
            if np.isfinite(values).any():
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
                plotted.append(values)
        if best_epoch is not None:
            ax.axvline(
                best_epoch,
                color="0.4",
                linestyle="--",
                linewidth=1,
                label=_best_label(history, epochs, best_epoch, val_key),
            )
        if label == "Accuracy":
            _clamp_to_unit(ax, plotted)
        _finish_axes(ax, "epoch", label, label)
    if title:
        fig.suptitle(_plain(title))
    return _save(fig, path)


def plot_histories(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Validation accuracy and loss of several runs overlaid, keyed by run name.

    Runs with no validation values are left off the panel (and logged), so that a run
    trained without a validation split does not hide the others.

    Raises:
        ValueError: ``histories`` is empty.
    """
    if not histories:
        raise ValueError("histories is empty; expected {run_name: history rows}.")
    fig = _new_figure(figsize=(11, 4.2))
    for ax, (_, val_key, label) in zip(fig.subplots(1, 2), _HISTORY_PANELS, strict=True):
        plotted = []
        for run, history in histories.items():
            values = _column(history, val_key) if history else np.array([])
            if not np.isfinite(values).any():
                logger.info("run %r has no %s values; left off the comparison", run, val_key)
                continue
            ax.plot(_epochs(history), values, marker="o", markersize=3, label=_plain(str(run)))
            plotted.append(values)
        if label == "Accuracy":
            _clamp_to_unit(ax, plotted)
        _finish_axes(ax, "epoch", label, f"Validation {label.lower()}")
    if title:
        fig.suptitle(_plain(title))
    return _save(fig, path)


def split_titles(split: str | None) -> tuple[str | None, str | None]:
    """The confusion matrix's and the ROC figure's titles for an evaluation of ``split``
    (none: their defaults), as the run's own figures and the report's name them."""
    if not split:
        return None, None
    return f"{split} split", f"ROC (one-vs-rest), {split} split"


def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Confusion matrix as counts and row-normalised (recall per true class), side by side.

    Rows are true classes, columns predictions, as :func:`imgclf.metrics.compute_metrics`
    returns them. A class with no samples has an empty normalised row, its cells marked
    "–" (its recall is undefined, as the report's per-class table shows it).
    Cells are annotated up to :data:`MAX_ANNOTATED_CLASSES` classes.

    Raises:
        ValueError: ``cm`` is not a square, non-negative matrix with one row per class name.
    """
    counts = np.asarray(cm, dtype=float)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(
            f"cm must be a square matrix with one row and column per class name, "
            f"{(n, n)}; received shape {counts.shape}."
        )
    if n == 0 or not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("cm must hold finite, non-negative counts for at least one class.")
    support = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, support, out=np.full_like(counts, np.nan), where=support > 0)

    side = max(4.5, 0.45 * n + 2.5)
    fig = _new_figure(figsize=(2 * side + 1, side))
    # Long names are cut: whole, they would squeeze the matrices away.
    names = [_plain(str(name)) for name in class_names]
    names = [n if len(n) <= TICK_LABEL_WIDTH else n[:TICK_LABEL_WIDTH - 1] + "\u2026"
             for n in names]
    panels = (
        (counts, "Counts", max(float(counts.max()), 1.0), _count_format(counts)),
        (normalised, "Normalised by true class", 1.0, "{:.2f}"),
    )
    for ax, (matrix, panel_title, vmax, fmt) in zip(fig.subplots(1, 2), panels, strict=True):
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        tick_size = 9 if n <= 15 else 7 if n <= 40 else 5
        ax.set_xticks(
            range(n),
            labels=names,
            rotation=45,
            ha="right",
            rotation_mode="anchor",
            fontsize=tick_size,
        )
        ax.set_yticks(range(n), labels=names, fontsize=tick_size)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(panel_title)
        if n <= MAX_ANNOTATED_CLASSES:
            _annotate_cells(ax, matrix, vmax, fmt, fontsize=9 if n <= 10 else 7)
    if title:
        fig.suptitle(_plain(title))
    return _save(fig, path)


def plot_roc_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """One-vs-rest ROC curves, as returned by :func:`imgclf.metrics.roc_curves`.

    An empty mapping (no class had both positives and negatives) still writes a figure
    that says so, so a report never links to a missing file.
    """
    fig = _new_figure(figsize=(6.5, 6))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
    cmap = colormaps["tab10" if len(curves) <= 10 else "tab20"]
    styles = ("-", "--", "-.")
    for index, (name, (fpr, tpr, area)) in enumerate(curves.items()):
        ax.plot(
            fpr,
            tpr,
            color=cmap(index % cmap.N),
            linestyle=styles[(index // cmap.N) % len(styles)],
            linewidth=1.5,
            label=f"{_plain(name)} (AUC {area:.3f})",
        )
    if not curves:
        logger.warning("no ROC curves to plot: no class has both positive and negative samples")
        ax.text(
            0.5,
            0.5,
            "ROC undefined:\nno class has both positive\nand negative samples",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(_plain(title) if title else "ROC (one-vs-rest)")
    ax.legend(loc="lower right", fontsize=8 if len(curves) <= 12 else 6)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas, outside pyplot's registry."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG to ``path``, creating parent folders: whole or not at all."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught, written_whole(out) as tmp:
        warnings.simplefilter("always")
        fig.savefig(tmp, format="png", dpi=DPI)
    # One log line per figure instead of matplotlib's warning per missing character; any
    # other warning goes on as it came.
    missing = []
    for w in caught:
        if match := _MISSING_GLYPH.match(str(w.message)):
            missing.append(chr(int(match[1])))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        logger.info("%s: %s drawn as empty boxes (the plot font has no glyph for them)", out,
                    " ".join(dict.fromkeys(missing)))
    logger.debug("wrote %s", out)
    return out


def _plain(text: str) -> str:
    """``text`` shown literally: no mathtext for ``$``, no legend-hiding leading ``_``, and
    file-name bytes that are not UTF-8 as ``\\udcXX`` (the fonts cannot draw them)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("$", r"\$")
    # matplotlib drops legend entries whose label starts with "_" (its "_nolegend_" rule).
    return " " + text if text.startswith("_") else text


def _column(history: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
    """``key`` from every row as floats; missing or ``None`` become NaN."""
    values = [row.get(key) for row in history]
    return np.array([np.nan if value is None else float(value) for value in values])


def _epochs(history: Sequence[Mapping[str, float]]) -> np.ndarray:
    """The rows' epoch numbers, or 1..N where any is missing."""
    epochs = _column(history, "epoch")
    if np.isnan(epochs).any():
        return np.arange(1, len(history) + 1, dtype=float)
    return epochs


def _best_label(
    history: Sequence[Mapping[str, float]], epochs: np.ndarray, best_epoch: int, val_key: str
) -> str:
    """Legend text for the best-epoch line, with the validation value there if known."""
    values = _column(history, val_key)
    at_best = values[epochs == best_epoch]
    if at_best.size and np.isfinite(at_best[0]):
        short = val_key.removeprefix("val_").replace("accuracy", "acc")
        return f"best epoch {best_epoch} (val {short} {at_best[0]:.3f})"
    return f"best epoch {best_epoch}"


def _clamp_to_unit(ax: Axes, series: Sequence[np.ndarray]) -> None:
    """Show accuracy on a 0..1 axis when every plotted value is a fraction."""
    finite = np.concatenate([values[np.isfinite(values)] for values in series] or [[]])
    if finite.size and finite.min() >= 0 and finite.max() <= 1:
        ax.set_ylim(0, 1.02)


def _finish_axes(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, integer epoch ticks, grid, and a legend when something was drawn."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _count_format(counts: np.ndarray) -> str:
    """Format for count cells: integers as such, anything else (weights) to 3 digits."""
    return "{:.0f}" if np.all(counts == np.round(counts)) else "{:.3g}"


def _annotate_cells(ax: Axes, matrix: np.ndarray, vmax: float, fmt: str, fontsize: int) -> None:
    """Write each cell's value, white on dark cells so it stays readable; "–" for NaN."""
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(
            col,
            row,
            "\u2013" if np.isnan(value) else fmt.format(value),
            ha="center",
            va="center",
            fontsize=fontsize,
            color="white" if value > vmax / 2 else "black",
        )
