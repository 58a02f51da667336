"""Reading run folders (``imgclf train``) and compare folders (``imgclf compare``).

Everything a report shows is read here into plain dataclasses, once, before any HTML is
written. Reading is forgiving inside the folder and strict about the folder itself. A
compare folder is often looked at while runs are still going or after some have failed, so
a run whose files are missing or broken gets a note (shown where its figures would be)
instead of sinking the whole report. A folder that is neither kind, or a run folder whose
own metrics.json or config.yaml cannot be read, raises :class:`~imgclf.errors.RunError`.
"""

from __future__ import annotations

import contextlib
import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.config import changes_text
from imgclf.data.layout import other_data
from imgclf.errors import RunError
from imgclf.history import read_history
from imgclf.leaderboard import (
    RANKED_BY,
    SORT_KEYS,
    as_number,
    best_first,
    evaluated_apart,
    run_row,
)
from imgclf.paths import (
    AUDIT_FILE,
    CONFIG_FILE,
    ERROR_FILE,
    HISTORY_FILE,
    LEADERBOARD_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    SKIPPED_FILE,
    class_of_column,
    enclosing_run,
    read_audit,
    read_run_config,
    read_run_metrics,
    read_text,
)

log = logging.getLogger(__name__)

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "precision_weighted": "Precision (weighted)",
    "recall_weighted": "Recall (weighted)",
    "f1_weighted": "F1 (weighted)",
    "precision_macro": "Precision (macro)",
    "recall_macro": "Recall (macro)",
    "f1_macro": "F1 (macro)",
    "cohen_kappa": "Cohen's kappa",
    "mcc": "MCC",
    "roc_auc": "ROC AUC",
    "log_loss": "Log loss",
}
"""How the page names each of the leaderboard's metrics (:data:`imgclf.leaderboard.METRICS`)."""
# The other metrics are fractions in 0..1, shown as percentages; these are not fractions of
# anything (kappa and MCC span -1..1, log loss is unbounded) and stay plain decimals.
SCORE_METRICS = frozenset({"cohen_kappa", "mcc", "log_loss"})

PREDICTION_COLUMNS = ["path", "label", "predicted", "confidence"]


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
    evaluated_run: Path | None = None  # an evaluation's run folder, where it was found

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def evaluated(self) -> str | None:
        """For a folder `imgclf evaluate` wrote (it has no config.yaml of its own): the
        folder of the run whose model it evaluated, as metrics.json recorded it."""
        run = (self.metrics or {}).get("run")
        return str(run) if run and not (self.folder / CONFIG_FILE).is_file() else None

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
    kind: str  # "run", "evaluation" (an `imgclf evaluate` folder) or "compare"
    runs: list[Run]
    rows: list[dict]  # leaderboard rows, best first
    ranked_by: str | None = None  # the key that ranks a comparison's rows; None: as listed
    audit: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def single(self) -> bool:
        """A report of one run's results (a run folder, or an evaluation of its model)."""
        return self.kind != "compare"


def sequence(value: object) -> list:
    """``value`` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


# --- the folder as a whole ------------------------------------------------------------------


def load_folder(folder: Path) -> Report:
    """Read a run folder or a compare folder, whichever ``folder`` is."""
    hint = ("pass a run folder (written by `imgclf train`) or a compare folder (written by "
            "`imgclf compare`)")
    if not folder.exists():
        raise RunError(f"{folder} does not exist; {hint}.")
    if not folder.is_dir():
        raise RunError(f"{folder} is a file, not a folder; {hint}.")
    if (folder / LEADERBOARD_FILE).is_file():
        return _load_compare(folder)
    if (folder / METRICS_FILE).is_file() or (folder / CONFIG_FILE).is_file():
        run = load_run(folder)
        kind = "evaluation" if run.evaluated is not None else "run"
        return Report(folder, kind, [run], [_row_from_run(run)])
    raise RunError(f"{folder} is neither a run folder (no metrics.json or config.yaml) nor a "
                   f"compare folder (no leaderboard.csv); {hint}.")


def _load_compare(folder: Path) -> Report:
    rows = _read_leaderboard(folder / LEADERBOARD_FILE)
    # Ranked as leaderboard.csv was; in its order when it does not say by what (an older one).
    ranked_by = rows[0].get(RANKED_BY) if rows else None
    report = Report(folder, "compare", [], [], ranked_by if ranked_by in SORT_KEYS else None)
    listed = {str(row.get("run")) for row in rows}
    # Runs still training (or added since) have a folder but no leaderboard row yet.
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in listed
                   and ((p / CONFIG_FILE).is_file() or (p / METRICS_FILE).is_file()))
    runs = {}
    for name in [str(row.get("run")) for row in rows] + extra:
        runs[name] = _load_compare_run(folder / name, name)
    compared = next((run.config for run in (runs[str(row.get("run"))] for row in rows)
                     if isinstance(run.config.get("data"), dict)), None)
    for name in extra:
        other = other_data(runs[name].config, compared) if compared and runs[name].config \
            else []
        if other:  # as compare leaves it out of the leaderboard
            report.notes.append(f"run {name} was trained on other data than the compared "
                                f"runs ({changes_text(other)}): not ranked with them")
            continue
        runs[name].notes.append("not in leaderboard.csv (still running, or added after it "
                                "was written)")
        rows.append(_row_from_run(runs[name]))
    report.rows = best_first(rows, report.ranked_by)
    report.runs = [runs[str(row.get("run"))] for row in report.rows]
    apart = evaluated_apart([_row_from_run(run) for run in report.runs])
    if apart:  # as compare warns
        report.notes.append(apart)
    audit_path = folder / AUDIT_FILE
    if audit_path.is_file():
        try:
            report.audit = read_audit(audit_path)
        except RunError as exc:
            report.notes.append(f"audit.json could not be read: {exc}")
            log.warning("%s", exc)
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
    status = "ok" if run.finished else "failed" if run.error else "unfinished"
    return run_row(run.name, run.config, run.metrics, len(run.history) or None, status,
                   _last_line(run.error))


def _last_line(text: str | None) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


# --- one run folder -------------------------------------------------------------------------


def load_run(folder: Path, name: str | None = None) -> Run:
    """Read a run folder; a broken metrics.json or config.yaml raises RunError.

    The other files are optional: a missing or unreadable one is noted on the run.
    """
    run = Run(name or folder.name, folder)
    config_path, metrics_path = folder / CONFIG_FILE, folder / METRICS_FILE
    if config_path.is_file():
        run.config_text, run.config = read_run_config(config_path)
    if metrics_path.is_file():
        run.metrics = read_run_metrics(metrics_path)
    if (folder / ERROR_FILE).is_file():
        run.error = read_text(folder / ERROR_FILE)
    if not run.finished and not run.error:
        run.notes.append("no metrics.json: the run failed or has not finished")
    if run.evaluated is not None:  # the settings are the evaluated run's; it has no history
        # Where metrics.json says, or, when the run has moved, the run folder it is in.
        for source in (Path(run.evaluated), enclosing_run(folder)):
            with contextlib.suppress(RunError, OSError, TypeError):  # TypeError: in none
                run.config_text, run.config = read_run_config(source / CONFIG_FILE)
                run.evaluated_run = source
                break
    else:
        run.history = _optional(run, HISTORY_FILE, _read_history) or []
    run.predictions = _optional(run, PREDICTIONS_FILE, _read_predictions)
    run.skipped = _optional(run, SKIPPED_FILE, _read_skipped)
    return run


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
    return [{key: value if key == "phase" else as_number(value) for key, value in row.items()}
            for row in read_history(path)]


def _read_predictions(path: Path) -> Predictions:
    # Read by position, not by name: a class may be called "path" or "label".
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or header[:4] != PREDICTION_COLUMNS or len(header) < 5:
            raise ValueError(f"expected columns {','.join(PREDICTION_COLUMNS)},<one per class>;"
                             f" found {header}")
        rows = [row for row in reader if row]
    classes = [class_of_column(column) for column in header[4:]]
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
