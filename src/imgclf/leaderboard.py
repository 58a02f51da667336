"""The leaderboard: a row per run, and the one rule that ranks the rows.

`imgclf compare` writes the rows to leaderboard.csv and leaderboard.md
(``write_leaderboard``), `imgclf report` shows a compare folder's rows on its page. Both
build a run's row here, from the run's
config.yaml and metrics.json, and rank the rows here by the metric ``compare --sort``
named (leaderboard.csv records it), so that the files and the page show the same runs in
the same order. Kept free of torch and of the report's plotting libraries, which neither
caller needs for this.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from imgclf.paths import LEADERBOARD_FILE, LEADERBOARD_MD, open_for_writing, write_text

METRICS = ("accuracy", "balanced_accuracy", "precision_weighted", "recall_weighted",
           "f1_weighted", "precision_macro", "recall_macro", "f1_macro", "cohen_kappa", "mcc",
           "roc_auc", "log_loss")
"""The scalar metrics of metrics.json, in the leaderboard's column order."""
RUN_COLUMNS = ("run", "method", "backbone", "img_size", "params_total", "params_trainable",
               "epochs", "train_seconds", "inference_images_per_second", "tta", "split",
               "n_samples", "status", "error")
"""The leaderboard's columns before the metrics (and the top-k accuracies after them)."""
RANKED_BY = "ranked_by"
"""The leaderboard's last column: the key its rows are ranked by, on every row."""
SORT_KEYS = (*METRICS, "train_seconds", "inference_images_per_second")
"""What the rows can be ranked by."""
LOWER_IS_BETTER = frozenset({"log_loss", "train_seconds"})
"""The sort keys whose lowest value is the best."""


def mapping(value: object) -> dict:
    """``value`` if it is a dict, else an empty one: JSON and YAML are read loosely."""
    return value if isinstance(value, dict) else {}


def run_row(name: str, config: dict, metrics: dict | None, epochs: int | None,
            status: str = "ok", error: str = "") -> dict:
    """The leaderboard row of run ``name`` from its settings (config.yaml) and results
    (metrics.json; None when it has none). A setting or result missing from them leaves
    its cell empty: the report shows runs whose files are incomplete."""
    model = mapping(config.get("model"))
    results = mapping(metrics)
    params = mapping(results.get("parameters"))
    row = {
        "run": name, "method": config.get("method"), "backbone": model.get("name"),
        "img_size": model.get("img_size"), "params_total": params.get("total"),
        "params_trainable": params.get("trainable"), "epochs": epochs,
        "train_seconds": results.get("train_seconds"),
        "inference_images_per_second": results.get("inference_images_per_second"),
        "tta": results.get("tta", False) if metrics is not None else None,
        "split": results.get("split"), "n_samples": results.get("n_samples"),
        "status": status, "error": error,
    }
    row.update({key: results.get(key) for key in METRICS})
    row.update(mapping(results.get("top_k_accuracy")))
    return row


def evaluated_apart(rows: list[dict]) -> str | None:
    """A note when finished runs among ``rows`` were evaluated on other images (another
    split, or the same split holding other images since), whose figures do not compare;
    None when they all were on the same."""
    seen: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("split"):
            seen.setdefault((str(row["split"]), str(row.get("n_samples"))), []).append(
                str(row.get("run")))
    if len(seen) < 2:
        return None
    order = sorted(seen, key=lambda where: (where[0], as_number(where[1]) or 0))
    groups = "; ".join(f"{split} split, {count} images: {', '.join(seen[(split, count)])}"
                       for split, count in order)
    return (f"the runs were evaluated on different images ({groups}), so their figures do "
            "not compare: delete the folders of those evaluated on images that have changed "
            "since, and compare again to train them on the data as it is")


def best_first(rows: list[dict], sort_by: str | None) -> list[dict]:
    """``rows`` ranked by their ``sort_by`` values, best first (the lowest for
    ``LOWER_IS_BETTER``, else the highest), then the finished runs without a value, then
    runs without results (status other than "ok"). Ties, and every row when ``sort_by`` is
    None, keep their order. Values may be numbers or, read back from leaderboard.csv, text.
    """

    def key(row: dict) -> tuple:
        value = as_number(row.get(sort_by)) if sort_by else None
        if value is not None and sort_by not in LOWER_IS_BETTER:
            value = -value
        return row.get("status") != "ok", value is None, value or 0.0

    return sorted(rows, key=key)


def as_number(value: object) -> float | None:
    """``value`` as a finite float, or None (absent, empty, NaN, not a number)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def top_k_columns(rows: list[dict]) -> list[str]:
    """The rows' top-k accuracy columns (``top_3``, ``top_10``, ...), by k."""
    names = {str(k) for row in rows for k in row if re.fullmatch(r"top_\d+", str(k))}
    return sorted(names, key=lambda name: int(name[4:]))


def write_leaderboard(rows: list[dict], out: Path, sort_by: str = "accuracy") -> None:
    """leaderboard.csv (every column) and leaderboard.md, best first by ``sort_by``, which
    their last column names: `imgclf report` ranks the folder's runs by it too."""
    ordered = [{**row, RANKED_BY: sort_by} for row in best_first(rows, sort_by)]
    columns = [*RUN_COLUMNS, *METRICS, *top_k_columns(rows), RANKED_BY]
    with open_for_writing(out / LEADERBOARD_FILE, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(ordered)
    write_text(out / LEADERBOARD_MD, leaderboard_markdown(ordered, columns))


def _cell(value) -> str:
    """A value as Markdown table text: on one line, with pipes and tags' '<' escaped."""
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return " ".join(str(value).split()).replace("|", "\\|").replace("<", "\\<")


def leaderboard_markdown(rows: list[dict], columns: list[str]) -> str:
    """``rows`` as a Markdown table of ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
