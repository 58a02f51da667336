"""What the Dataset section says about the data.

A compare folder usually holds the dataset audit (audit.json, written by ``imgclf
compare``): its counts per class and split, and each kind of problem it found. Without
one, the section falls back on what training recorded: the data summary, the images
evaluated per class and the files skipped (skipped.csv).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from imgclf.leaderboard import mapping
from imgclf.paths import AUDIT_FILE, SKIPPED_FILE
from imgclf.report import template as t
from imgclf.report.folders import Run, sequence

MAX_LISTED = 10
"""Files listed per kind of dataset problem; the counts cover them all."""


# --- the audit ------------------------------------------------------------------------------


def audit_html(audit: dict) -> str:
    """The audit: where and how the data was checked, the counts, the problems."""
    splits = {name: mapping(s) for name, s in mapping(audit.get("splits")).items()}
    classes = [str(c) for c in sequence(audit.get("classes"))] or sorted(
        {c for s in splits.values() for c in mapping(s.get("classes"))})
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

    rows = [[t.text(c), *(t.integer(mapping(splits[n].get("classes")).get(c)) for n in names)]
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


def _audit_problems(audit: dict) -> str:
    """Each kind of problem the audit holds, with its count and the first few files."""
    mismatches = sequence(audit.get("extension_mismatches"))
    unreadable = sequence(audit.get("unreadable"))
    skipped = sequence(audit.get("skipped"))
    exact = mapping(audit.get("exact_duplicates"))
    near = mapping(audit.get("near_duplicates"))
    across = sequence(exact.get("across_splits"))
    problems = [
        ("Exact duplicates across splits (leakage: evaluation images also trained on)",
         across, lambda g: _group(g) + ("" if mapping(g).get("same_class", True)
                                        else " <strong>(different class)</strong>")),
        ("Identical files under different classes (label conflicts)",
         sequence(exact.get("label_conflicts")), _group),
        ("Exact duplicates within a split", sequence(exact.get("within_split")), _group),
        ("Near-duplicates across splits", sequence(near.get("pairs")), _near_pair),
        ("Unreadable images", unreadable,
         lambda r: f"{_file(r)}: {t.text(mapping(r).get('reason', ''))}"),
        ("Files whose extension is not their format", mismatches,
         lambda r: f"{_file(r)}: named {t.text(mapping(r).get('extension', '?'))}, "
                   f"is {t.text(mapping(r).get('format', '?'))}"),
        ("Skipped files (hidden, system or not images)", skipped,
         lambda r: f"{_file(r)}: {t.text(mapping(r).get('reason', ''))}"),
    ]
    parts = []
    for title, records, describe in problems:
        count = len(records)
        if title.startswith("Near") and isinstance(near.get("found"), int):
            count = near["found"]
        if not count:
            continue
        items = _listed(records, describe, count, AUDIT_FILE)
        parts.append(t.details(f"{t.text(title)}: {count:,}",
                               t.bullet_list(items, "problems"), open_=True))
    if near and not near.get("checked", True):
        parts.append(t.paragraph("Near-duplicates across splits were not checked.", "muted"))
    if not parts:
        checked = "exact and near-duplicates" if near.get("checked") else "exact duplicates"
        parts.append(t.paragraph(f"None: no unreadable files, no file whose extension "
                                 f"misnames its format, and no {checked} within or across "
                                 "splits."))
    return "\n".join(parts)


def _file(record: object) -> str:
    """'split:path' of an audit file record (or the record itself, if it is not one)."""
    rec = mapping(record)
    if not rec:
        return t.text(record)
    where = f"{rec['split']}:" if rec.get("split") else ""
    return f"<code>{t.text(where + str(rec.get('path', '?')))}</code>"


def _group(group: object) -> str:
    files = sequence(mapping(group).get("files"))
    return " = ".join(_file(f) for f in files) or t.text(group)


def _near_pair(pair: object) -> str:
    p = mapping(pair)
    text = f"{_file(p.get('a'))} ~ {_file(p.get('b'))}"
    if p.get("distance") is not None:
        text += f" (distance {t.text(p['distance'])})"
    if p.get("same_class") is False:
        text += " <strong>(different class)</strong>"
    return text


# --- what training saw ----------------------------------------------------------------------


def training_data_html(runs: list[Run]) -> str:
    """The dataset as training saw it: its summary line, evaluated images, skipped files."""
    source = next((run for run in runs if run.finished), runs[0] if runs else None)
    if source is None:
        return t.paragraph("No run to describe the data from.", "muted")
    parts = []
    summaries = list(dict.fromkeys(str(run.metrics["data_summary"]) for run in runs
                                   if run.metrics and run.metrics.get("data_summary")))
    parts += [t.paragraph("Training " + t.text(s)) for s in summaries]
    copies = mapping((source.metrics or {}).get("copies_of_training_images"))
    flattered = [f"{t.integer(n)} {t.text(name)}" for name, n in copies.items() if n]
    if flattered:
        parts.append(t.note(
            "Exact copies of training images among the images it was checked on: "
            f"{', '.join(flattered)}. Their figures flatter the model, which has seen them; "
            "<code>imgclf audit</code> names the files."))
    per_class = mapping((source.metrics or {}).get("per_class"))
    if per_class:
        split = (source.metrics or {}).get("split", "evaluated")
        rows = [[t.text(name), t.integer(mapping(v).get("support"))]
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
    files = _listed(run.skipped, lambda row: f"<code>{t.text(row.get('split') or '?')}:"
                                             f"{t.text(row.get('path') or '?')}</code>",
                    len(run.skipped), SKIPPED_FILE)
    return (t.table(["split", "reason", "files"], rows, numeric=[2])
            + t.details(f"Skipped files: {len(run.skipped):,}", t.bullet_list(files, "problems")))


def _listed(records: list, describe: Callable[[Any], str], total: int, source: str) -> list[str]:
    """The first :data:`MAX_LISTED` records described, then a line counting the rest of
    ``total`` (which ``source`` lists in full)."""
    items = [describe(r) for r in records[:MAX_LISTED]]
    if total > len(items):
        items.append(f"\u2026 and {total - len(items):,} more (see {source})")
    return items
