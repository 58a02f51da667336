"""The parts of the report page: its title and header, and one function per section.

Each ``*_section(report, ...)`` returns the body of the section of that name in
:data:`SECTIONS`, as HTML; :func:`imgclf.report.html.render` puts them on the page. Figures
come from :mod:`imgclf.report.figures`, the dataset tables from
:mod:`imgclf.report.dataset`.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from pathlib import Path

from imgclf.leaderboard import LOWER_IS_BETTER, METRICS, mapping, top_k_columns
from imgclf.report import figures
from imgclf.report import template as t
from imgclf.report.dataset import audit_html, training_data_html
from imgclf.report.folders import METRIC_LABELS, SCORE_METRICS, Report, Run

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
"""(anchor id, heading) of each section, in page order."""


# --- title and header -----------------------------------------------------------------------


def title(report: Report) -> str:
    name = report.folder.resolve().name
    what = {"run": "run", "evaluation": "evaluation"}.get(report.kind, "comparison")
    return f"imgclf report: {what} {name}"


def header(report: Report) -> str:
    """What the folder is, the data, and the best run's headline figures."""
    folder = report.folder.resolve()
    best = report.runs[0] if report.runs else None
    if report.kind == "run":
        heading = f"Training run {t.text(folder.name)}"
        what = "One training run: how it trained, how well it does, and where it goes wrong."
    elif report.kind == "evaluation":
        heading = f"Evaluation {t.text(folder.name)}"
        what = (f"The model of the run {best.evaluated_run or best.evaluated}, evaluated on "
                "the data below: how well it does, and where it goes wrong.")
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
    data = (run.metrics or {}).get("data") if run.evaluated else \
        mapping(run.config.get("data")).get("data")
    if data:
        parts.append(f"Data <code>{t.text(data)}</code>")
    classes = run.classes
    if classes:
        shown = ", ".join(classes[:12]) + (f", \u2026 ({len(classes) - 12} more)"
                                           if len(classes) > 12 else "")
        parts.append(f"{len(classes)} classes: {t.text(shown)}")
    metrics = run.metrics or {}
    if metrics.get("split"):
        mirrored = ", each averaged with its mirror image" if metrics.get("tta") else ""
        parts.append(f"evaluated on the {t.text(metrics['split'])} split"
                     f" ({t.integer(metrics.get('n_samples'))} images{mirrored})")
    return " \u00b7 ".join(parts)


def _headline_cards(report: Report, best: Run) -> str:
    metrics = best.metrics or {}
    cards = []
    if report.kind == "compare":
        cards.append(t.card("Best run", t.text(best.name)))
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc"):
        cards.append(t.card(METRIC_LABELS[key], t.percent(metrics.get(key))))
    return '<div class="cards">' + "".join(cards) + "</div>"


# --- dataset --------------------------------------------------------------------------------


def dataset_section(report: Report) -> str:
    parts = [t.note(t.text(n)) for n in report.notes]
    if report.audit is not None:
        parts.append(audit_html(report.audit))
        return "\n".join(parts)
    if report.kind == "compare":
        parts.append(t.paragraph(
            "This compare folder has no audit.json (it was made with <code>--no-audit</code>, "
            "or the audit failed); below is what training found. <code>imgclf audit DATA"
            "</code> checks the dataset in full.", "muted"))
    parts.append(training_data_html(report.runs))
    return "\n".join(parts)


# --- leaderboard ----------------------------------------------------------------------------


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


def leaderboard_section(report: Report) -> str:
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
    parts = [t.table(headers, rows, numeric=numeric, row_classes=styles, caption_html=(
        f"{_ranking(report)}Metrics are on the evaluated split. Rates are "
        "percentages; log loss is in nats (lower is better); train time covers the "
        "training epochs and, for a frozen backbone, computing its features, or reading "
        "them from the cache when an earlier run computed them (so compare such times "
        "with care); hover a failed run for its error."))]
    parts += [t.note(t.text(note)) for note in _evaluation_notes(report)]
    parts.append(_all_metrics(report))
    parts += _failures(report)
    return "\n".join(parts)


def _ranking(report: Report) -> str:
    """What orders a comparison's rows, as leaderboard.csv says (nothing for one run)."""
    if report.single:
        return ""
    if report.ranked_by is None:
        return ("Runs in the order of leaderboard.csv, which does not say what ranked them; "
                "runs without results last. ")
    order = "lowest" if report.ranked_by in LOWER_IS_BETTER else "highest"
    return (f"Runs ranked by <code>{t.text(report.ranked_by)}</code> (<code>imgclf compare "
            f"--sort</code>), {order} first; runs without results last. ")


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
    if report.single:
        return list(by_note)
    return [f"{', '.join(names)}: {note}" for note, names in by_note.items()]


def _all_metrics(report: Report) -> str:
    keys = [*METRICS, *top_k_columns(report.rows)]
    rows = []
    for row in report.rows:
        cells = [t.text(row.get("run"))]
        for key in keys:
            value = row.get(key)
            cells.append(t.decimal(value, 4) if key in SCORE_METRICS else t.percent(value))
        rows.append(cells)
    headers = ["Run", *(METRIC_LABELS.get(k, k.replace("top_", "Top-") + " accuracy")
                        for k in keys)]
    undefined = [f"{t.text(run.name)}: {t.text(metric)} is undefined: {t.text(reason)}"
                 for run in report.runs
                 for metric, reason in mapping((run.metrics or {}).get("undefined")).items()]
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


def learning_curves_section(report: Report, tmp: Path) -> str:
    if report.kind == "evaluation":
        return t.paragraph("An evaluation trains nothing: the learning curves are in the "
                           "report of its run (<code>imgclf report RUN</code>).", "muted")
    parts = []
    histories = {run.name: run.history for run in report.runs if run.history}
    if report.kind == "compare" and len(histories) > 1:
        parts.append(figures.histories_figure(histories, tmp))

    def curves(run: Run) -> str:
        if not run.finished and not run.history:
            return _no_results(run)
        return figures.learning_curves_figure(run, tmp)

    parts.append(_per_run(report, curves, needs_results=False))
    return "\n".join(parts)


def confusion_matrices_section(report: Report, tmp: Path) -> str:
    return _per_run(report, lambda run: figures.confusion_figure(run, tmp))


def roc_curves_section(report: Report, tmp: Path) -> str:
    intro = t.paragraph("One curve per class, that class against all the others, from the "
                        "predicted probabilities on the evaluated split.", "muted")
    return intro + _per_run(report, lambda run: figures.roc_figure(run, tmp), grid=True)


def mistakes_section(report: Report) -> str:
    intro = t.paragraph(
        f"Evaluated images whose prediction was wrong, the most confident first (at most "
        f"{figures.GALLERY_SIZE} per run), shown at {figures.THUMBNAIL}\u00d7"
        f"{figures.THUMBNAIL}, resized to a square as the model saw them at its own input "
        "size. Confident mistakes "
        "are where to look for mislabelled images, ambiguous classes, or a shortcut the model "
        "learned.", "muted")
    return intro + _per_run(report, figures.mistakes_gallery)


# --- tables per run -------------------------------------------------------------------------


def per_class_section(report: Report) -> str:
    return _per_run(report, _per_class, grid=True)


def _per_class(run: Run) -> str:
    metrics = run.metrics or {}
    per_class = mapping(metrics.get("per_class"))
    if not per_class:
        return t.paragraph("metrics.json has no per-class figures.", "muted")
    rows = []
    for name, values in per_class.items():
        v = mapping(values)
        # No images of the class here: its recall and F1 are undefined; never predicted:
        # its precision is (metrics.json holds scikit-learn's 0 for each).
        absent = t.as_number(v.get("support")) == 0
        unpredicted = not (t.as_number(v.get("tp")) or t.as_number(v.get("fp")))
        rows.append([t.text(name), t.percent(None if unpredicted else v.get("precision")),
                     *(t.percent(None if absent else v.get(m)) for m in ("recall", "f1")),
                     t.integer(v.get("support")), t.integer(v.get("tp")),
                     t.integer(v.get("fp")), t.integer(v.get("fn"))])
    support = sum(t.as_number(mapping(v).get("support")) or 0 for v in per_class.values())
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
                     "positives, false positives, false negatives. A class without images "
                     "here has no recall or F1 (–); the macro average leaves it out unless "
                     "it was predicted, and then counts them as 0. A class never predicted "
                     "has no precision (–); the averages count it as 0.")


def configuration_section(report: Report) -> str:
    return _per_run(report, _configuration, needs_results=False, titled=False)


def _configuration(run: Run) -> str:
    config = run.config
    model = mapping(config.get("model"))
    train = mapping(config.get("train"))
    facts = [str(v) for v in (config.get("method"), model.get("name")) if v]
    if model.get("img_size"):
        facts.append(f"{model['img_size']} px")
    if train.get("epochs") is not None:
        facts.append(f"{train['epochs']} epochs")
    if config.get("seed") is not None:
        facts.append(f"seed {config['seed']}")
    summary = (f"{t.text(run.name)} <span class=\"detail\">"
               f"{t.text(' · '.join(facts))}</span>")
    missing = ("The evaluated run's config.yaml cannot be read: its folder has moved or gone."
               if run.evaluated else "No config.yaml in the run folder.")
    body = (t.preformatted(run.config_text) if run.config_text is not None
            else t.paragraph(missing, "muted"))
    return t.details(summary, body)


# --- one block per run ----------------------------------------------------------------------


def _per_run(report: Report, body: Callable[[Run], str], needs_results: bool = True,
             grid: bool = False, titled: bool = True) -> str:
    """``body(run)`` for each run, under the run's name when there are several (and
    ``titled``).

    ``grid`` lays the runs out side by side where the page is wide enough (for figures
    narrow enough to compare at a glance).
    """
    if not report.runs:
        return t.paragraph("No runs yet: leaderboard.csv lists none.", "muted")
    if report.single:
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
