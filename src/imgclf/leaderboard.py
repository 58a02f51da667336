"""The leaderboard's rows: what `imgclf compare` writes and `imgclf report` shows of a run.

Both build a run's row here, from the run's config.yaml and metrics.json, so that
leaderboard.csv and the report's page show the same columns for the same run. Kept free
of torch and of the report's plotting libraries, which neither caller needs for this.
"""

from __future__ import annotations

METRICS = ("accuracy", "balanced_accuracy", "precision_weighted", "recall_weighted",
           "f1_weighted", "precision_macro", "recall_macro", "f1_macro", "cohen_kappa", "mcc",
           "roc_auc", "log_loss")
"""The scalar metrics of metrics.json, in the leaderboard's column order."""
RUN_COLUMNS = ("run", "method", "backbone", "img_size", "params_total", "params_trainable",
               "epochs", "train_seconds", "inference_images_per_second", "tta", "status",
               "error")
"""The leaderboard's columns before the metrics (and the top-k accuracies after them)."""


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
        "status": status, "error": error,
    }
    row.update({key: results.get(key) for key in METRICS})
    row.update(mapping(results.get("top_k_accuracy")))
    return row
