"""Tests for imgclf.plots: each figure is a real PNG of sensible size, written without warnings."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf import plots
from imgclf.metrics import roc_curves
from imgclf.plots import (
    plot_confusion_matrix,
    plot_histories,
    plot_history,
    plot_roc_curves,
)

# NaN validation values, empty confusion rows and odd names must not warn.
pytestmark = pytest.mark.filterwarnings("error")

HISTORY = [
    {"epoch": 1, "loss": 1.2, "accuracy": 0.40, "val_loss": 1.1, "val_accuracy": 0.45},
    {"epoch": 2, "loss": 0.9, "accuracy": 0.60, "val_loss": 0.95, "val_accuracy": 0.58},
    {"epoch": 3, "loss": 0.7, "accuracy": 0.72, "val_loss": 0.90, "val_accuracy": 0.66},
    {"epoch": 4, "loss": 0.5, "accuracy": 0.81, "val_loss": 0.97, "val_accuracy": 0.64},
]


def _assert_png(path: Path, min_width: int = 300, min_height: int = 150) -> tuple[int, int]:
    """The file is a non-empty PNG that PIL decodes, at least the given size."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        width, height = image.size
    assert min_width <= width <= 6000 and min_height <= height <= 6000
    return width, height


def test_plot_history_writes_png_with_best_epoch(tmp_path: Path) -> None:
    out = plot_history(HISTORY, tmp_path / "history.png", best_epoch=3, title="run $1_a")
    assert out == tmp_path / "history.png"
    width, height = _assert_png(out)
    assert width > height  # two panels side by side


def test_plot_history_tolerates_nan_and_missing_validation(tmp_path: Path) -> None:
    history = [
        {"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": math.nan, "val_accuracy": None},
        {"epoch": 2, "loss": 0.8, "accuracy": 0.6},
        {"epoch": 3, "loss": 0.7, "accuracy": 0.7, "val_loss": 0.9, "val_accuracy": 0.6},
    ]
    _assert_png(plot_history(history, tmp_path / "nan.png", best_epoch=3))
    no_val = [{"epoch": i, "loss": 1 / i, "accuracy": i / 10} for i in range(1, 4)]
    _assert_png(plot_history(no_val, tmp_path / "sub" / "no_val.png"))


def test_plot_history_rejects_empty_history(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="history is empty"):
        plot_history([], tmp_path / "x.png")


def test_plot_histories_overlays_runs_and_skips_runs_without_validation(tmp_path: Path) -> None:
    histories = {
        "scratch": HISTORY,
        "_transfer": [{**row, "val_accuracy": row["val_accuracy"] + 0.1} for row in HISTORY],
        "no-val": [{"epoch": 1, "loss": 1.0, "accuracy": 0.5}],
    }
    _assert_png(plot_histories(histories, tmp_path / "compare.png"))
    with pytest.raises(ValueError, match="histories is empty"):
        plot_histories({}, tmp_path / "x.png")


def test_plot_confusion_matrix_with_all_zero_row(tmp_path: Path, monkeypatch) -> None:
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class "c" has no samples
    names = ["a long class name", "b", "c"]
    figures, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    width, height = _assert_png(plot_confusion_matrix(cm, names, tmp_path / "cm.png", title="t"))
    assert width > height
    counts, normalised = ([t.get_text() for t in ax.texts] for ax in figures[0].axes[:2])
    assert counts[6:] == ["0", "0", "0"]
    # Its recall is undefined, not 0: no cell of its normalised row says a number.
    assert normalised[:6] == ["0.83", "0.17", "0.00", "0.40", "0.60", "0.00"]
    assert normalised[6:] == ["\u2013"] * 3


def test_class_names_that_are_not_utf8_are_drawn_escaped(tmp_path: Path) -> None:
    # A class folder named with a byte that is not UTF-8, as os.listdir returns it.
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    cm = np.array([[3, 1], [0, 4]])
    _assert_png(plot_confusion_matrix(cm, [name, "b"], tmp_path / "cm.png", title=name))
    curves = roc_curves(np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7],
                                                        [0.2, 0.8]]), [name, "b"])
    _assert_png(plot_roc_curves(curves, tmp_path / "roc.png"))


def test_characters_the_font_cannot_draw_are_one_log_line_not_warnings(tmp_path, caplog):
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="imgclf.plots"):
        warnings.simplefilter("error")  # a warning that reaches the user fails the test
        # U+E000 is a private-use character: no font draws it
        out = plot_confusion_matrix(np.array([[2, 1], [0, 3]]), ["\ue000", "b"],
                                    tmp_path / "cm.png")
    assert out.is_file()
    lines = [r.getMessage() for r in caplog.records if "empty boxes" in r.getMessage()]
    assert lines == [f"{out}: \ue000 drawn as empty boxes (the plot font has no glyph for them)"]


def test_plot_confusion_matrix_many_classes_and_list_input(tmp_path: Path) -> None:
    n = 35  # above the annotation limit
    cm = np.random.default_rng(0).integers(0, 20, size=(n, n)).tolist()
    _assert_png(plot_confusion_matrix(cm, [f"class_{i}" for i in range(n)], tmp_path / "big.png"))


def test_plot_confusion_matrix_with_very_long_class_names(tmp_path: Path) -> None:
    # Whole, 200-character names squeeze the matrices to nothing and matplotlib warns.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_png(plot_confusion_matrix(np.array([[2, 1], [0, 3]]), ["a" * 200, "b" * 200],
                                          tmp_path / "cm.png"))


def test_plot_confusion_matrix_rejects_shape_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"one row and column per class name.*\(2, 2\)"):
        plot_confusion_matrix(np.zeros((3, 3)), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-negative"):
        plot_confusion_matrix(np.array([[1, -1], [0, 1]]), ["a", "b"], tmp_path / "x.png")


def test_plot_roc_curves_from_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 10)
    logits = rng.normal(size=(40, 4)) + 2 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    curves = roc_curves(y, probs, ["cat", "dog", "_bird", "fish $"])
    assert len(curves) == 4
    _assert_png(plot_roc_curves(curves, tmp_path / "roc.png"), min_width=300, min_height=300)


def test_plot_roc_curves_empty_still_writes_a_figure(tmp_path: Path) -> None:
    _assert_png(plot_roc_curves({}, tmp_path / "roc.png"), min_width=300, min_height=300)


def test_plots_module_does_not_import_pyplot() -> None:
    code = "import sys, imgclf.plots; sys.exit('matplotlib.pyplot' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


def test_a_figure_cut_off_while_saving_leaves_the_older_file_whole(tmp_path, monkeypatch):
    out = plot_roc_curves({}, tmp_path / "roc.png")
    before = out.read_bytes()

    def cut_off(fig, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", cut_off)
    with pytest.raises(KeyboardInterrupt):
        plot_history(HISTORY, out)
    assert out.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [out]  # nor a temporary file beside it
