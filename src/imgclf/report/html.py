"""The HTML report of a run folder (``imgclf train``) or a compare folder (``imgclf compare``).

:func:`write_report` reads what those commands leave behind and writes one self-contained
page: dataset summary, leaderboard, learning curves, confusion matrices, ROC curves,
per-class scores, the most confident mistakes (as thumbnails) and each run's configuration.

Reading is forgiving inside the folder and strict about the folder itself. A compare folder
is often looked at while runs are still going or after some have failed, so a run whose
files are missing or broken gets a visible note where its figures would be, instead of
sinking the whole report. A folder that is neither kind, or a run folder whose own
metrics.json or config.yaml cannot be read, raises :class:`~imgclf.errors.RunError`.

Figures come from the run folder's PNG files. A missing one is drawn again from the data
beside it (history.csv, metrics.json, predictions.csv) in a temporary folder: the report
never writes into the folders it reports on.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from imgclf import __version__
from imgclf.data.decode import DecodeError, decode_image
from imgclf.errors import RunError
from imgclf.metrics import roc_curves
from imgclf.plots import plot_confusion_matrix, plot_histories, plot_history, plot_roc_curves
from imgclf.report import template as t

log = logging.getLogger(__name__)

GALLERY_SIZE = 12
"""Wrong predictions shown per run, most confident first."""
THUMBNAIL = 128
"""Side of a gallery thumbnail: images are resized to a square, as the model saw them."""
MAX_LISTED = 10
"""Files listed per kind of dataset problem; the counts cover them all."""

SECTIONS = (
    ("dataset", "Dataset"),
    ("leaderboard", "Leaderboard"),
    ("learning-curves", "Learning curves"),
    ("confusion-matrices", "Confusion matrices"),
    ("roc-curves", "ROC curves"),
    ("per-class", "Per-class precision, recall and F1"),
    ("mistakes", "Most confident mistakes"),
    ("configuration", "Configuration"),
)

# Fractions in 0..1 shown as percentages; the scores after them are not fractions of
# anything (kappa and MCC span -1..1, log loss is unbounded) and stay plain decimals.
RATE_METRICS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "precision_weighted": "Precision (weighted)",
    "recall_weighted": "Recall (weighted)",
    "f1_weighted": "F1 (weighted)",
    "precision_macro": "Precision (macro)",
    "recall_macro": "Recall (macro)",
    "f1_macro": "F1 (macro)",
    "roc_auc": "ROC AUC",
}
SCORE_METRICS = {"cohen_kappa": "Cohen's kappa", "mcc": "MCC", "log_loss": "Log loss"}

PREDICTION_COLUMNS = ["path", "label", "predicted", "confidence"]


# --- what the folders hold ----------------------------------------------------------------


@dataclass
class Predictions:
    """predictions.csv: one row per evaluated image, with a probability per class."""

    classes: list[str]
    paths: list[str]
    labels: list[str]
    predicted: list[str]
    confidence: np.ndarray
    probs: np.ndarray


@dataclass
class Run:
    """One run folder as read; ``notes`` say what could not be read, for the page."""

    name: str
    folder: Path
    config: dict = field(default_factory=dict)
    config_text: str | None = None
    metrics: dict | None = None
    history: list[dict] = field(default_factory=list)
    predictions: Predictions | None = None
    skipped: list[dict] | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def classes(self) -> list[str]:
        names = (self.metrics or {}).get("class_names")
        if isinstance(names, list):
            return [str(n) for n in names]
        return self.predictions.classes if self.predictions else []


@dataclass
class Report:
    """Everything the page is built from."""

    folder: Path
    kind: str  # "run" or "compare"
    runs: list[Run]
    rows: list[dict]  # leaderboard rows, best first
    audit: dict | None = None
    notes: list[str] = field(default_factory=list)


def write_report(folder: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the HTML report of a run or compare ``folder``; returns its path.

    ``out`` defaults to ``folder/report.html``. The file embeds every image as a data URI
    and needs no network to view.

    Raises:
        RunError: ``folder`` is missing, is neither a run folder (metrics.json or
            config.yaml) nor a compare folder (leaderboard.csv), or its essential files
            cannot be read.
    """
    folder = Path(folder)
    report = load_folder(folder)
    out_path = Path(out) if out is not None else folder / "report.html"
    with tempfile.TemporaryDirectory(prefix="imgclf-report-") as tmp:
        page = render(report, Path(tmp))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".tmp")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, out_path)
    log.info("report of %s written to %s (%.1f MB)", folder, out_path, len(page) / 1e6)
    return out_path


def load_folder(folder: Path) -> Report:
    """Read a run folder or a compare folder, whichever ``folder`` is."""
    hint = ("pass a run folder (written by `imgclf train`) or a compare folder (written by "
            "`imgclf compare`)")
    if not folder.exists():
        raise RunError(f"{folder} does not exist; {hint}.")
    if not folder.is_dir():
        raise RunError(f"{folder} is a file, not a folder; {hint}.")
    if (folder / "leaderboard.csv").is_file():
        return _load_compare(folder)
    if (folder / "metrics.json").is_file() or (folder / "config.yaml").is_file():
        run = load_run(folder)
        return Report(folder, "run", [run], [_row_from_run(run)])
    raise RunError(f"{folder} is neither a run folder (no metrics.json or config.yaml) nor a "
                   f"compare folder (no leaderboard.csv); {hint}.")


def load_run(folder: Path, name: str | None = None) -> Run:
    """Read a run folder; a broken metrics.json or config.yaml raises RunError.

    The other files are optional: a missing or unreadable one is noted on the run.
    """
    run = Run(name or folder.name, folder)
    config_path, metrics_path = folder / "config.yaml", folder / "metrics.json"
    if config_path.is_file():
        run.config_text = _read_text(config_path)
        try:
            config = yaml.safe_load(run.config_text)
        except yaml.YAMLError as exc:
            raise RunError(f"{config_path} is not valid YAML ({exc}); it is written by "
                           "`imgclf train`: train the run again or repair the file.") from None
        if not isinstance(config, dict):
            raise RunError(f"{config_path} holds {type(config).__name__}, not a mapping of "
                           "config sections; train the run again or repair the file.")
        run.config = config
    if metrics_path.is_file():
        try:
            metrics = json.loads(_read_text(metrics_path))
        except json.JSONDecodeError as exc:
            raise RunError(f"{metrics_path} is not valid JSON ({exc}); evaluate the run again "
                           "with `imgclf evaluate` or train it again.") from None
        if not isinstance(metrics, dict):
            raise RunError(f"{metrics_path} holds {type(metrics).__name__}, not a mapping of "
                           "metrics; evaluate the run again.")
        run.metrics = metrics
    if (folder / "error.txt").is_file():
        run.error = _read_text(folder / "error.txt")
    if not run.finished and not run.error:
        run.notes.append("no metrics.json: the run failed or has not finished")
    run.history = _optional(run, "history.csv", _read_history) or []
    run.predictions = _optional(run, "predictions.csv", _read_predictions)
    run.skipped = _optional(run, "skipped.csv", _read_skipped)
    return run


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}.") from None


def _optional(run: Run, name: str, reader: Callable[[Path], object]):
    """``reader(run.folder / name)``, or None with a note when the file is absent or bad."""
    path = run.folder / name
    if not path.is_file():
        if run.finished:
            run.notes.append(f"no {name} in the run folder")
        return None
    try:
        return reader(path)
    except (OSError, csv.Error, ValueError) as exc:  # ValueError covers bad UTF-8
        run.notes.append(f"{name} could not be read: {exc}")
        log.warning("%s could not be read: %s", path, exc)
        return None


def _read_history(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append({key: value if key == "phase" else t.as_number(value)
                         for key, value in row.items() if key is not None})
    return rows


def _read_predictions(path: Path) -> Predictions:
    # Read by position, not by name: a class may be called "path" or "label".
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or header[:4] != PREDICTION_COLUMNS or len(header) < 5:
            raise ValueError(f"expected columns {','.join(PREDICTION_COLUMNS)},<one per class>;"
                             f" found {header}")
        rows = [row for row in reader if row]
    classes = header[4:]
    bad = [n for n, row in enumerate(rows, start=2) if len(row) != len(header)]
    if bad:
        raise ValueError(f"line {bad[0]} has a different number of columns than the header")
    probs = np.array([[float(v) for v in row[4:]] for row in rows], dtype=float)
    return Predictions(
        classes=classes,
        paths=[row[0] for row in rows],
        labels=[row[1] for row in rows],
        predicted=[row[2] for row in rows],
        confidence=np.array([float(row[3]) for row in rows], dtype=float),
        probs=probs.reshape(len(rows), len(classes)),
    )


def _read_skipped(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _load_compare(folder: Path) -> Report:
    rows = _read_leaderboard(folder / "leaderboard.csv")
    report = Report(folder, "compare", [], [])
    listed = {str(row.get("run")) for row in rows}
    # Runs still training (or added since) have a folder but no leaderboard row yet.
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in listed
                   and ((p / "config.yaml").is_file() or (p / "metrics.json").is_file()))
    runs = {}
    for name in [str(row.get("run")) for row in rows] + extra:
        runs[name] = _load_compare_run(folder / name, name)
    for name in extra:
        runs[name].notes.append("not in leaderboard.csv (still running, or added after it "
                                "was written)")
        rows.append(_row_from_run(runs[name]))
    report.rows = _best_first(rows)
    report.runs = [runs[str(row.get("run"))] for row in report.rows]
    audit_path = folder / "audit.json"
    if audit_path.is_file():
        try:
            audit = json.loads(audit_path.read_text(encoding="utf-8"))
            if not isinstance(audit, dict):
                raise ValueError(f"it holds {type(audit).__name__}, not a mapping")
            report.audit = audit
        except (OSError, ValueError) as exc:
            report.notes.append(f"audit.json could not be read: {exc}")
            log.warning("%s could not be read: %s", audit_path, exc)
    return report


def _load_compare_run(folder: Path, name: str) -> Run:
    if not name:
        return Run("(no name)", folder, notes=["a leaderboard.csv row has no run name"])
    if not folder.is_dir():
        return Run(name, folder, notes=[f"the run folder {folder.name}/ is missing"])
    try:
        return load_run(folder, name)
    except RunError as exc:
        log.warning("run %s: %s", name, exc)
        return Run(name, folder, notes=[str(exc)])


def _read_leaderboard(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunError(f"cannot read {path}: {exc}; run `imgclf compare` again to rewrite "
                       "it.") from None
    if "run" not in columns:
        raise RunError(f"{path} has no 'run' column (columns: {', '.join(columns) or 'none'}); "
                       "it is written by `imgclf compare`: run it again to rewrite it.")
    return rows


def _row_from_run(run: Run) -> dict:
    """The leaderboard row of a run, as `imgclf compare` writes it."""
    metrics = run.metrics or {}
    model = _mapping(run.config.get("model"))
    params = _mapping(metrics.get("parameters"))
    row = {
        "run": run.name, "method": run.config.get("method"), "backbone": model.get("name"),
        "img_size": model.get("img_size"), "params_total": params.get("total"),
        "params_trainable": params.get("trainable"), "epochs": len(run.history) or None,
        "train_seconds": metrics.get("train_seconds"),
        "inference_images_per_second": metrics.get("inference_images_per_second"),
        "status": "ok" if run.finished else "failed" if run.error else "unfinished",
        "error": _last_line(run.error),
    }
    row.update({key: metrics.get(key) for key in (*RATE_METRICS, *SCORE_METRICS)})
    row.update(_mapping(metrics.get("top_k_accuracy")))
    return row


def _last_line(text: str | None) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


def _best_first(rows: list[dict]) -> list[dict]:
    """Finished runs by accuracy (then balanced accuracy), best first; the others after."""

    def key(row: dict) -> tuple:
        acc, bal = t.as_number(row.get("accuracy")), t.as_number(row.get("balanced_accuracy"))
        return (row.get("status") != "ok", acc is None, -(acc or 0.0), -(bal or 0.0))

    return sorted(rows, key=key)


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _sequence(value: object) -> list:
    return value if isinstance(value, list) else []


# --- the page -----------------------------------------------------------------------------


def render(report: Report, tmp: Path) -> str:
    """The HTML page of ``report``; figures that must be drawn again go to ``tmp``."""
    sections = {
        "dataset": _dataset_section(report),
        "leaderboard": _leaderboard_section(report),
        "learning-curves": _curves_section(report, tmp),
        "confusion-matrices": _per_run(report, lambda run: _confusion(run, tmp)),
        "roc-curves": _roc_intro() + _per_run(report, lambda run: _roc(run, tmp), grid=True),
        "per-class": _per_run(report, _per_class, grid=True),
        "mistakes": _mistakes_intro() + _per_run(report, _mistakes),
        "configuration": _per_run(report, _configuration, needs_results=False, titled=False),
    }
    return t.page(
        title=_title(report),
        header=_header(report),
        toc=SECTIONS,
        sections=[t.section(anchor, title, sections[anchor]) for anchor, title in SECTIONS],
        footer=(f"Written by imgclf {t.text(__version__)} on "
                f"{datetime.now().strftime('%Y-%m-%d %H:%M')} from <code>"
                f"{t.text(report.folder.resolve())}</code>. Self-contained: every image is "
                "embedded and nothing is loaded from the network."),
        version=__version__,
    )


def _title(report: Report) -> str:
    name = report.folder.resolve().name
    return f"imgclf report: {'run' if report.kind == 'run' else 'comparison'} {name}"


def _header(report: Report) -> str:
    folder = report.folder.resolve()
    best = report.runs[0] if report.runs else None
    if report.kind == "run":
        heading = f"Training run {t.text(folder.name)}"
        what = "One training run: how it trained, how well it does, and where it goes wrong."
    else:
        failed = sum(not run.finished for run in report.runs)
        heading = f"Comparison {t.text(folder.name)}"
        what = (f"{len(report.runs)} runs trained on the same data and ranked"
                + (f" ({failed} without results)" if failed else "") + ".")
    lines = [f"<h1>{heading}</h1>", t.paragraph(t.text(what)),
             t.paragraph(f"Folder <code>{t.text(folder)}</code>")]
    if best is not None:
        lines.append(t.paragraph(_data_line(best)))
    if best is not None and best.finished:
        lines.append(_headline_cards(report, best))
    return "\n".join(lines)


def _data_line(run: Run) -> str:
    """'Data <root> · 3 classes: a, b, c · evaluated on the test split (120 images)'."""
    parts = []
    data = _mapping(run.config.get("data")).get("data")
    if data:
        parts.append(f"Data <code>{t.text(data)}</code>")
    classes = run.classes
    if classes:
        shown = ", ".join(classes[:12]) + (f", \u2026 ({len(classes) - 12} more)"
                                           if len(classes) > 12 else "")
        parts.append(f"{len(classes)} classes: {t.text(shown)}")
    metrics = run.metrics or {}
    if metrics.get("split"):
        parts.append(f"evaluated on the {t.text(metrics['split'])} split"
                     f" ({t.integer(metrics.get('n_samples'))} images)")
    return " \u00b7 ".join(parts)


def _headline_cards(report: Report, best: Run) -> str:
    metrics = best.metrics or {}
    cards = []
    if report.kind == "compare":
        cards.append(t.card("Best run", t.text(best.name)))
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc"):
        cards.append(t.card(RATE_METRICS[key], t.percent(metrics.get(key))))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _per_run(report: Report, body: Callable[[Run], str], needs_results: bool = True,
             grid: bool = False, titled: bool = True) -> str:
    """``body(run)`` for each run, under the run's name when there are several (and
    ``titled``).

    ``grid`` lays the runs out side by side where the page is wide enough (for figures
    narrow enough to compare at a glance).
    """
    if not report.runs:
        return t.paragraph("No runs yet: leaderboard.csv lists none.", "muted")
    if report.kind == "run":
        run = report.runs[0]
        return body(run) if run.finished or not needs_results else _no_results(run)
    parts = []
    for run in report.runs:
        content = body(run) if run.finished or not needs_results else _no_results(run)
        parts.append(f"<h3>{t.text(run.name)}</h3>\n{content}" if titled else content)
    if grid:
        return '<div class="run-grid">' + "".join(f"<div>{p}</div>" for p in parts) + "</div>"
    return "\n".join(parts)


def _no_results(run: Run) -> str:
    return t.paragraph("No results: " + t.text(_why_no_results(run)), "muted")


def _why_no_results(run: Run) -> str:
    if run.error:
        return "the run failed (see its error under Leaderboard)."
    return run.notes[0] if run.notes else "the run has no metrics.json."


# --- dataset --------------------------------------------------------------------------------


def _dataset_section(report: Report) -> str:
    parts = [t.note(t.text(n)) for n in report.notes]
    if report.audit is not None:
        parts.append(_audit_html(report.audit))
        return "\n".join(parts)
    if report.kind == "compare":
        parts.append(t.paragraph(
            "This compare folder has no audit.json (it was made with <code>--no-audit</code>, "
            "or the audit failed); below is what training found. <code>imgclf audit DATA"
            "</code> checks the dataset in full.", "muted"))
    parts.append(_training_data_html(report.runs))
    return "\n".join(parts)


def _audit_html(audit: dict) -> str:
    splits = {name: _mapping(s) for name, s in _mapping(audit.get("splits")).items()}
    classes = [str(c) for c in _sequence(audit.get("classes"))] or sorted(
        {c for s in splits.values() for c in _mapping(s.get("classes"))})
    intro = [f"Audit of <code>{t.text(audit.get('root', '?'))}</code>"]
    if audit.get("layout"):
        intro.append(f"layout: {t.text(audit['layout'])}")
    intro.append(f"{len(classes)} classes")
    if audit.get("seconds") is not None:
        intro.append(f"checked in {t.seconds(audit.get('seconds'))}")
    parts = [t.paragraph(" \u00b7 ".join(intro)), "<h3>Images per class and split</h3>"]
    if splits:
        parts.append(_counts_table(splits, classes))
    else:
        parts.append(t.paragraph("audit.json lists no splits.", "muted"))
    parts.append("<h3>Problems found</h3>")
    parts.append(_audit_problems(audit))
    return "\n".join(parts)


def _counts_table(splits: dict[str, dict], classes: list[str]) -> str:
    names = list(splits)

    def counts(key: str, fmt=t.integer) -> list[str]:
        return [fmt(splits[n].get(key)) for n in names]

    rows = [[t.text(c), *(t.integer(_mapping(splits[n].get("classes")).get(c)) for n in names)]
            for c in classes]
    rows.append(["images", *counts("images")])
    rows.append(["unreadable", *counts("unreadable")])
    rows.append(["skipped", *counts("skipped")])
    rows.append(["imbalance", *counts("imbalance_ratio", lambda v: t.decimal(v, 2))])
    styles = [None] * len(classes) + ["total", None, None, None]
    return t.table(["class", *names], rows, numeric=range(1, len(names) + 1), row_classes=styles,
                   caption_html="Readable images per class. Imbalance is the largest class "
                                "over the smallest; unreadable files are images that could "
                                "not be decoded, skipped files are not images at all.")


def _file(record: object) -> str:
    """'split:path' of an audit file record (or the record itself, if it is not one)."""
    rec = _mapping(record)
    if not rec:
        return t.text(record)
    where = f"{rec['split']}:" if rec.get("split") else ""
    return f"<code>{t.text(where + str(rec.get('path', '?')))}</code>"


def _audit_problems(audit: dict) -> str:
    """Each kind of problem the audit holds, with its count and the first few files."""
    mismatches = _sequence(audit.get("extension_mismatches"))
    unreadable = _sequence(audit.get("unreadable"))
    skipped = _sequence(audit.get("skipped"))
    exact = _mapping(audit.get("exact_duplicates"))
    near = _mapping(audit.get("near_duplicates"))
    across = _sequence(exact.get("across_splits"))
    problems = [
        ("Exact duplicates across splits (leakage: evaluation images also trained on)",
         across, lambda g: _group(g) + ("" if _mapping(g).get("same_class", True)
                                        else " <strong>(different class)</strong>")),
        ("Identical files under different classes (label conflicts)",
         _sequence(exact.get("label_conflicts")), _group),
        ("Exact duplicates within a split", _sequence(exact.get("within_split")), _group),
        ("Near-duplicates across splits", _sequence(near.get("pairs")), _near_pair),
        ("Unreadable images", unreadable,
         lambda r: f"{_file(r)}: {t.text(_mapping(r).get('reason', ''))}"),
        ("Files whose extension is not their format", mismatches,
         lambda r: f"{_file(r)}: named {t.text(_mapping(r).get('extension', '?'))}, "
                   f"is {t.text(_mapping(r).get('format', '?'))}"),
        ("Skipped files (hidden, system or not images)", skipped,
         lambda r: f"{_file(r)}: {t.text(_mapping(r).get('reason', ''))}"),
    ]
    parts = []
    for title, records, describe in problems:
        count = len(records)
        if title.startswith("Near") and isinstance(near.get("found"), int):
            count = near["found"]
        if not count:
            continue
        items = [describe(r) for r in records[:MAX_LISTED]]
        if count > len(items):
            items.append(f"\u2026 and {count - len(items):,} more (see audit.json)")
        parts.append(t.details(f"{t.text(title)}: {count:,}",
                               t.bullet_list(items, "problems"), open_=True))
    if near and not near.get("checked", True):
        parts.append(t.paragraph("Near-duplicates across splits were not checked.", "muted"))
    if not parts:
        checked = "exact and near-duplicates" if near.get("checked") else "exact duplicates"
        parts.append(t.paragraph(f"None: no unreadable or mislabelled files, and no "
                                 f"{checked} within or across splits."))
    return "\n".join(parts)


def _group(group: object) -> str:
    files = _sequence(_mapping(group).get("files"))
    return " = ".join(_file(f) for f in files) or t.text(group)


def _near_pair(pair: object) -> str:
    p = _mapping(pair)
    text = f"{_file(p.get('a'))} ~ {_file(p.get('b'))}"
    if p.get("distance") is not None:
        text += f" (distance {t.text(p['distance'])})"
    if p.get("same_class") is False:
        text += " <strong>(different class)</strong>"
    return text


def _training_data_html(runs: list[Run]) -> str:
    """The dataset as training saw it: its summary line, evaluated images, skipped files."""
    source = next((run for run in runs if run.finished), runs[0] if runs else None)
    if source is None:
        return t.paragraph("No run to describe the data from.", "muted")
    parts = []
    summaries = list(dict.fromkeys(str(run.metrics["data_summary"]) for run in runs
                                   if run.metrics and run.metrics.get("data_summary")))
    parts += [t.paragraph("Training " + t.text(s)) for s in summaries]
    per_class = _mapping((source.metrics or {}).get("per_class"))
    if per_class:
        split = (source.metrics or {}).get("split", "evaluated")
        rows = [[t.text(name), t.integer(_mapping(v).get("support"))]
                for name, v in per_class.items()]
        parts.append(f"<h3>Images evaluated per class ({t.text(split)} split)</h3>")
        parts.append(t.table(["class", "images"], rows, numeric=[1]))
    parts.append("<h3>Skipped files</h3>")
    parts.append(_skipped_html(source))
    return "\n".join(parts)


def _skipped_html(run: Run) -> str:
    if run.skipped is None:
        return t.paragraph("No skipped.csv in the run folder.", "muted")
    if not run.skipped:
        return t.paragraph("None: every file in the dataset folders was a readable image.")
    counts = Counter((row.get("split") or "?", row.get("reason") or "?") for row in run.skipped)
    rows = [[t.text(split), t.text(reason), t.integer(n)]
            for (split, reason), n in counts.most_common()]
    files = [f"<code>{t.text(row.get('split') or '?')}:{t.text(row.get('path') or '?')}</code>"
             for row in run.skipped[:MAX_LISTED]]
    if len(run.skipped) > MAX_LISTED:
        files.append(f"\u2026 and {len(run.skipped) - MAX_LISTED:,} more (see skipped.csv)")
    return (t.table(["split", "reason", "files"], rows, numeric=[2])
            + t.details(f"Skipped files: {len(run.skipped):,}", t.bullet_list(files, "problems")))


# --- leaderboard ------------------------------------------------------------------------------

def _label(value: object) -> str:
    return t.MISSING if value is None or value == "" else t.text(value)


LEADERBOARD_COLUMNS = (
    ("run", "Run", _label),
    ("img_size", "Size", t.integer),
    ("epochs", "Epochs", t.integer),
    ("params_total", "Parameters", t.count),
    ("train_seconds", "Train time", t.seconds),
    ("inference_images_per_second", "Images/s", lambda v: t.decimal(v, 1)),
    ("accuracy", "Accuracy", t.percent),
    ("balanced_accuracy", "Balanced acc.", t.percent),
    ("f1_macro", "F1 macro", t.percent),
    ("roc_auc", "ROC AUC", t.percent),
    ("log_loss", "Log loss", lambda v: t.decimal(v, 4)),
)
TEXT_COLUMNS = {"run"}
COLUMN_INDEX = {key: index for index, (key, _, _) in enumerate(LEADERBOARD_COLUMNS)}


def _leaderboard_section(report: Report) -> str:
    headers = ["#", *(label for _, label, _ in LEADERBOARD_COLUMNS)]
    rows, styles = [], []
    for rank, row in enumerate(report.rows, start=1):
        status = str(row.get("status") or "unknown")
        cells = [str(rank)] + [fmt(row.get(key)) for key, _, fmt in LEADERBOARD_COLUMNS]
        cells[1 + COLUMN_INDEX["params_total"]] += _parameters_note(row)
        if status != "ok":
            error = escape(str(row.get("error") or ""))
            cells[1] += f' <span class="badge" title="{error}">{t.text(status)}</span>'
        what = [str(row[k]) for k in ("method", "backbone") if row.get(k) not in (None, "")]
        if what:
            cells[1] += f'<br><span class="muted">{t.text(" · ".join(what))}</span>'
        rows.append(cells)
        styles.append("best" if rank == 1 and status == "ok" else
                      None if status == "ok" else "failed")
    numeric = [0] + [i + 1 for i, (key, _, _) in enumerate(LEADERBOARD_COLUMNS)
                     if key not in TEXT_COLUMNS]
    what = "Runs" if report.kind == "compare" else "The run"
    parts = [t.table(headers, rows, numeric=numeric, row_classes=styles, caption_html=(
        f"{what} ranked by accuracy on the evaluated split, best first. Rates are "
        "percentages; log loss is in nats (lower is better); train time covers the "
        "training epochs only; hover a failed run for its error."))]
    parts += [t.note(t.text(note)) for note in _evaluation_notes(report)]
    parts.append(_all_metrics(report))
    parts += _failures(report)
    return "\n".join(parts)


def _parameters_note(row: dict) -> str:
    """Under the parameter count, how many train when that is not all of them."""
    total = t.as_number(row.get("params_total"))
    trainable = t.as_number(row.get("params_trainable"))
    if total is None or trainable is None or trainable == total:
        return ""
    return f'<br><span class="muted">{t.count(trainable)} trainable</span>'


def _evaluation_notes(report: Report) -> list[str]:
    """Metrics notes (e.g. 'evaluated on validation'), once each, naming the runs."""
    by_note: dict[str, list[str]] = {}
    for run in report.runs:
        note = (run.metrics or {}).get("note")
        if note:
            by_note.setdefault(str(note), []).append(run.name)
    if report.kind == "run":
        return list(by_note)
    return [f"{', '.join(names)}: {note}" for note, names in by_note.items()]


def _all_metrics(report: Report) -> str:
    top_k = sorted({k for row in report.rows for k in row if str(k).startswith("top_")})
    labels = {**RATE_METRICS, **SCORE_METRICS}
    keys = [*RATE_METRICS, *SCORE_METRICS, *top_k]
    rows = []
    for row in report.rows:
        cells = [t.text(row.get("run"))]
        for key in keys:
            value = row.get(key)
            cells.append(t.decimal(value, 4) if key in SCORE_METRICS else t.percent(value))
        rows.append(cells)
    headers = ["Run", *(labels.get(k, k.replace("top_", "Top-") + " accuracy") for k in keys)]
    undefined = [f"{t.text(run.name)}: {t.text(metric)} is undefined: {t.text(reason)}"
                 for run in report.runs
                 for metric, reason in _mapping((run.metrics or {}).get("undefined")).items()]
    body = t.table(headers, rows, numeric=range(1, len(headers)), caption_html=(
        "Macro averages weigh every class equally; weighted averages weigh classes by their "
        "number of images. Kappa and MCC run from -1 to 1 (0 = chance)."))
    if undefined:
        body += t.bullet_list(undefined)
    return t.details("All metrics", body)


def _failures(report: Report) -> list[str]:
    parts = []
    problems = [f"<strong>{t.text(run.name)}</strong>: {t.text(note)}"
                for run in report.runs for note in run.notes]
    if problems:
        parts.append("<h3>Problems in the run folders</h3>")
        parts.append(t.bullet_list(problems, "problems"))
    for run in report.runs:
        if run.error:
            parts.append(t.details(f"Error of run {t.text(run.name)}",
                                   t.preformatted(run.error.strip())))
    return parts


# --- figures --------------------------------------------------------------------------------


def _curves_section(report: Report, tmp: Path) -> str:
    parts = []
    histories = {run.name: run.history for run in report.runs if run.history}
    if report.kind == "compare" and len(histories) > 1:
        path = plot_histories(histories, tmp / "histories.png",
                              title="Validation curves of every run")
        parts.append(t.plot_figure(_file_uri(path), "validation curves of every run",
                                   "Validation accuracy and loss of every run, overlaid."))
    parts.append(_per_run(report, lambda run: _learning_curves(run, tmp), needs_results=False))
    return "\n".join(parts)


def _learning_curves(run: Run, tmp: Path) -> str:
    if not run.finished and not run.history:
        return _no_results(run)

    def draw(path: Path) -> Path:
        if not run.history:
            raise ValueError("history.csv is missing or empty")
        monitor = str(_mapping(run.config.get("train")).get("monitor") or "val_loss")
        return plot_history(run.history, path, best_epoch=_best_epoch(run.history, monitor),
                            title=run.name)

    return _run_figure(run, "learning_curves.png", tmp, draw, "learning curves",
                       "history.csv")


def _best_epoch(history: list[dict], monitor: str) -> int | None:
    """The epoch the monitor liked best, as imgclf.evaluation.best_epoch picks it.

    Not imported from there: that module loads torch, which a report has no use for.
    """
    values = [(row[monitor], row["epoch"]) for row in history
              if row.get(monitor) is not None and row.get("epoch") is not None]
    if not values:
        return None
    best = (min if "loss" in monitor else max)(values)[1]
    return int(best)


def _confusion(run: Run, tmp: Path) -> str:
    def draw(path: Path) -> Path:
        cm = (run.metrics or {}).get("confusion_matrix")
        if cm is None:
            raise ValueError("metrics.json has no confusion_matrix")
        split = (run.metrics or {}).get("split")
        return plot_confusion_matrix(np.asarray(cm), run.classes, path,
                                     title=f"{split} split" if split else None)

    return _run_figure(run, "confusion_matrix.png", tmp, draw, "confusion matrix",
                       "metrics.json")


def _roc_intro() -> str:
    return t.paragraph("One curve per class, that class against all the others, from the "
                       "predicted probabilities on the evaluated split.", "muted")


def _roc(run: Run, tmp: Path) -> str:
    def draw(path: Path) -> Path:
        p = run.predictions
        if p is None:
            raise ValueError("predictions.csv is missing")
        unknown = sorted(set(p.labels) - set(p.classes))
        if unknown:
            raise ValueError(f"predictions.csv has labels without a probability column: "
                             f"{unknown}")
        labels = [p.classes.index(label) for label in p.labels]
        return plot_roc_curves(roc_curves(labels, p.probs, p.classes), path)

    return _run_figure(run, "roc_curves.png", tmp, draw, "ROC curves", "predictions.csv")


def _run_figure(run: Run, filename: str, tmp: Path, draw: Callable[[Path], Path], alt: str,
                source: str) -> str:
    """The run's PNG, or one drawn again from ``source`` when the PNG is missing."""
    path = run.folder / filename
    if path.is_file():
        try:
            return t.plot_figure(_file_uri(path), f"{alt} of {run.name}")
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
    return t.plot_figure(_file_uri(drawn), f"{alt} of {run.name}",
                         f"{t.text(reason)} in the run folder: drawn again from "
                         f"{t.text(source)}.")


def _file_uri(path: Path) -> str:
    return t.data_uri(path.read_bytes(), "image/png")


# --- tables and gallery -----------------------------------------------------------------------


def _per_class(run: Run) -> str:
    metrics = run.metrics or {}
    per_class = _mapping(metrics.get("per_class"))
    if not per_class:
        return t.paragraph("metrics.json has no per-class figures.", "muted")
    rows = []
    for name, values in per_class.items():
        v = _mapping(values)
        rows.append([t.text(name), t.percent(v.get("precision")), t.percent(v.get("recall")),
                     t.percent(v.get("f1")), t.integer(v.get("support")), t.integer(v.get("tp")),
                     t.integer(v.get("fp")), t.integer(v.get("fn"))])
    support = sum(t.as_number(_mapping(v).get("support")) or 0 for v in per_class.values())
    for kind in ("macro", "weighted"):
        rows.append([f"{kind} average", *(t.percent(metrics.get(f"{m}_{kind}"))
                                          for m in ("precision", "recall", "f1")),
                     t.integer(support), "", "", ""])
    styles = [None] * len(per_class) + ["total", "total"]
    return t.table(
        ["Class", "Precision", "Recall", "F1", "Images", "TP", "FP", "FN"], rows,
        numeric=range(1, 8), row_classes=styles,
        caption_html="Precision: of the images predicted as the class, the share that are; "
                     "recall: of the images of the class, the share found. TP, FP, FN: true "
                     "positives, false positives, false negatives.")


def _mistakes_intro() -> str:
    return t.paragraph(
        f"Evaluated images whose prediction was wrong, the most confident first (at most "
        f"{GALLERY_SIZE} per run), shown at {THUMBNAIL}\u00d7{THUMBNAIL} as the model saw "
        "them: resized to a square. Confident mistakes are where to look for mislabelled "
        "images, ambiguous classes, or a shortcut the model learned.", "muted")


def _mistakes(run: Run) -> str:
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

    Training records paths as it was given them, so a relative path is relative to the
    directory ``imgclf train`` ran in: usually the current one or an ancestor of the run
    folder. The first of those where the file exists wins.
    """
    path = Path(path_text)
    if path.is_absolute() or path.exists():
        return path
    for base in run_folder.resolve().parents:
        if (base / path).exists():
            return base / path
    return path


# --- configuration ----------------------------------------------------------------------------


def _configuration(run: Run) -> str:
    config = run.config
    model = _mapping(config.get("model"))
    train = _mapping(config.get("train"))
    facts = [str(v) for v in (config.get("method"), model.get("name")) if v]
    if model.get("img_size"):
        facts.append(f"{model['img_size']} px")
    if train.get("epochs") is not None:
        facts.append(f"{train['epochs']} epochs")
    if config.get("seed") is not None:
        facts.append(f"seed {config['seed']}")
    summary = (f"{t.text(run.name)} <span class=\"detail\">"
               f"{t.text(' · '.join(facts))}</span>")
    body = (t.preformatted(run.config_text) if run.config_text is not None
            else t.paragraph("No config.yaml in the run folder.", "muted"))
    return t.details(summary, body)
