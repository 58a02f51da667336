"""Classification metrics: pure functions of true labels and predicted probabilities.

Everything here works on plain numpy arrays (no torch), so evaluation, comparison and
reports share one definition of every number. :func:`compute_metrics` returns a dict that
``json.dumps`` can write as is: fractions in 0..1 (never percent), plain Python numbers,
and ``None`` for a metric that is undefined on the given data, with the reason recorded
under ``"undefined"``. Degenerate inputs (a class missing from the test split, a single
class, a model that always predicts one class) are common on small datasets; they give
``None`` and a reason, never an exception or a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    auc,
    cohen_kappa_score,
    confusion_matrix,
    log_loss,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

logger = logging.getLogger(__name__)

# Rows of ``probs`` may drift from 1 by float32 rounding (softmax, fp16 inference); a row
# further off than this is not a probability distribution (logits, say) and is rejected.
PROB_SUM_TOLERANCE = 1e-3


def compute_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] | np.ndarray,
    top_k: tuple[int, ...] = (3, 5),
) -> dict[str, Any]:
    """Every evaluation number for one set of predictions, as a JSON-ready dict.

    ``probs`` is ``(N, C)`` class probabilities whose rows sum to 1; the prediction for a
    sample is its argmax (the lowest index wins a tie). Keys:

    - ``n_samples``, ``accuracy``, ``balanced_accuracy`` (mean recall over the classes
      present in ``y_true``, as scikit-learn defines it);
    - ``precision_weighted``, ``recall_weighted``, ``f1_weighted`` (weighted by support) and
      ``precision_macro``, ``recall_macro``, ``f1_macro`` (unweighted mean over the classes
      that occur in ``y_true`` or in the predictions: a class absent from both has no
      evidence either way and would only drag the mean towards 0);
    - ``cohen_kappa``, ``mcc`` (multi-class Matthews correlation);
    - ``roc_auc``: binary from ``probs[:, 1]``, else one-vs-rest macro average;
    - ``log_loss`` (natural log; probabilities are clipped away from 0 by scikit-learn);
    - ``top_k_accuracy``: ``{"top_3": x, ...}`` for each ``k`` in ``top_k`` with
      ``k < C`` (for ``k >= C`` it would always be 1, so it is left out);
    - ``confusion_matrix``: list of rows, row = true class, column = predicted class;
    - ``per_class``: ``{name: {precision, recall, f1, support, tp, fp, fn, tn}}`` for every
      class, one-vs-rest, including classes with no samples;
    - ``class_names`` and ``undefined``: ``{metric: reason}`` for each metric set to
      ``None``.

    Precision, recall and F1 use scikit-learn's ``zero_division=0``: a class that is never
    predicted has precision 0 and a class with no samples has recall 0, rather than an
    undefined value; this keeps per-class tables numeric and matches common reporting.

    Raises:
        ValueError: the arguments do not describe ``N`` labels and ``N`` probability rows
            over ``len(class_names)`` classes, or ``top_k`` holds a non-positive value.
    """
    labels, probs, names = _validate(y_true, probs, class_names)
    ks = _validate_top_k(top_k)
    n_classes = len(names)
    all_labels = np.arange(n_classes)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(labels, y_pred, labels=all_labels).astype(np.int64)
    undefined: dict[str, str] = {}

    # Macro averages run over the classes seen in y_true or y_pred (scikit-learn's default).
    seen = np.union1d(labels, y_pred)
    p_macro, r_macro, f_macro, _ = precision_recall_fscore_support(
        labels, y_pred, labels=seen, average="macro", zero_division=0
    )
    p_weighted, r_weighted, f_weighted, _ = precision_recall_fscore_support(
        labels, y_pred, labels=all_labels, average="weighted", zero_division=0
    )

    result: dict[str, Any] = {
        "n_samples": int(labels.size),
        "accuracy": float(accuracy_score(labels, y_pred)),
        "balanced_accuracy": _balanced_accuracy(cm),
        "precision_weighted": float(p_weighted),
        "recall_weighted": float(r_weighted),
        "f1_weighted": float(f_weighted),
        "precision_macro": float(p_macro),
        "recall_macro": float(r_macro),
        "f1_macro": float(f_macro),
        "cohen_kappa": _cohen_kappa(labels, y_pred, cm, names, undefined),
        "mcc": _mcc(labels, y_pred, cm, undefined),
        "roc_auc": _roc_auc(labels, probs, names, undefined),
        "log_loss": _log_loss(labels, probs, undefined),
        "top_k_accuracy": {
            f"top_{k}": _top_k_accuracy(labels, probs, k) for k in ks if k < n_classes
        },
        "confusion_matrix": cm.tolist(),
        "per_class": _per_class(labels, y_pred, cm, names),
        "class_names": list(names),
        "undefined": undefined,
    }
    return result


def roc_curves(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] | np.ndarray,
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest ROC curve of every class, as ``{name: (fpr, tpr, auc)}``, for plotting.

    A class's curve needs both positive and negative samples; a class absent from
    ``y_true`` (or the only class in it) has no curve and is left out, so the result may
    be empty. Arguments are validated as in :func:`compute_metrics`.
    """
    labels, probs, names = _validate(y_true, probs, class_names)
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    skipped: list[str] = []
    for index, name in enumerate(names):
        is_positive = labels == index
        if is_positive.all() or not is_positive.any():
            skipped.append(name)
            continue
        fpr, tpr, _ = roc_curve(is_positive, probs[:, index])
        curves[name] = (fpr, tpr, float(auc(fpr, tpr)))
    if skipped:
        logger.debug("no ROC curve for classes without both positives and negatives: %s", skipped)
    return curves


def _validate(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray,
    class_names: Sequence[str] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check the three arguments against each other; return int labels, float64 probs, names.

    Rows of ``probs`` within :data:`PROB_SUM_TOLERANCE` of 1 are renormalised so that
    scikit-learn's stricter sum checks (which warn or raise) pass on float32 input.
    """
    if isinstance(class_names, np.ndarray) and class_names.ndim == 1:  # np.unique's, say
        class_names = class_names.tolist()
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError(
            f"class_names must be a sequence of class-name strings; received "
            f"{type(class_names).__name__} {class_names!r}."
        )
    names = [str(name) for name in class_names]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"class_names must be unique; received duplicates {duplicates}.")
    if len(names) < 2:
        raise ValueError(
            f"class_names must name at least 2 classes; received {len(names)}: {names}."
        )

    probs_arr = np.asarray(probs)
    if probs_arr.ndim != 2:
        raise ValueError(
            f"probs must be a 2-D array of shape (n_samples, n_classes); received shape "
            f"{probs_arr.shape}."
        )
    if probs_arr.shape[1] != len(names):
        raise ValueError(
            f"probs has {probs_arr.shape[1]} columns but class_names has {len(names)} "
            f"entries; expected one probability column per class name."
        )
    if not np.issubdtype(probs_arr.dtype, np.number) or np.issubdtype(
        probs_arr.dtype, np.complexfloating
    ):
        raise ValueError(f"probs must hold real numbers; received dtype {probs_arr.dtype}.")
    probs_arr = probs_arr.astype(np.float64)

    labels = _validate_labels(y_true, len(names))
    if labels.size != probs_arr.shape[0]:
        raise ValueError(
            f"y_true has {labels.size} labels but probs has {probs_arr.shape[0]} rows; "
            f"expected one probability row per label."
        )
    if labels.size == 0:
        raise ValueError("y_true and probs are empty; metrics need at least one sample.")

    if not np.isfinite(probs_arr).all():
        row = int(np.flatnonzero(~np.isfinite(probs_arr).all(axis=1))[0])
        raise ValueError(
            f"probs must be finite; row {row} is {probs_arr[row].tolist()}. "
            f"Expected class probabilities in 0..1."
        )
    if probs_arr.min() < 0 or probs_arr.max() > 1:
        raise ValueError(
            f"probs must lie in 0..1; received values from {probs_arr.min():.4g} to "
            f"{probs_arr.max():.4g}. If these are logits, apply softmax first."
        )
    sums = probs_arr.sum(axis=1)
    off = np.abs(sums - 1) > PROB_SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"probs rows must sum to 1 (class probabilities); row {row} sums to "
            f"{sums[row]:.4g} ({int(off.sum())} rows are off by more than "
            f"{PROB_SUM_TOLERANCE}). If these are logits or scores, apply softmax first."
        )
    return labels, probs_arr / sums[:, None], names


def _validate_labels(y_true: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """``y_true`` as a 1-D int64 array of class indices in ``0..n_classes-1``."""
    arr = np.asarray(y_true)
    if arr.ndim != 1:
        raise ValueError(
            f"y_true must be a 1-D sequence of class indices; received shape {arr.shape}."
        )
    if arr.size == 0:
        return arr.astype(np.int64)
    # Float labels are accepted when they are whole numbers (e.g. read back from a CSV).
    integral = arr.dtype.kind in "iu" or (
        arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr) & (arr == np.round(arr))))
    )
    if not integral:
        raise ValueError(
            f"y_true must hold integer class indices 0..{n_classes - 1}; received dtype "
            f"{arr.dtype} (first value {arr[0]!r}). Map class names to indices first."
        )
    labels = arr.astype(np.int64)
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise ValueError(
            f"y_true holds labels outside 0..{n_classes - 1} (one per class name): "
            f"{sorted(set(labels[bad].tolist()))[:10]}."
        )
    return labels


def _validate_top_k(top_k: tuple[int, ...]) -> tuple[int, ...]:
    """``top_k`` as a tuple of positive ints."""
    ks = tuple(top_k)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"top_k must hold positive integers; received {top_k!r}.")
    return tuple(int(k) for k in ks)


def _balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over classes with support, from the confusion matrix.

    Same definition as ``sklearn.metrics.balanced_accuracy_score``; computed here because
    scikit-learn warns whenever a predicted class is absent from ``y_true``.
    """
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def _cohen_kappa(
    labels: np.ndarray,
    y_pred: np.ndarray,
    cm: np.ndarray,
    names: list[str],
    undefined: dict[str, str],
) -> float | None:
    """Cohen's kappa, or ``None`` when chance agreement is 1 (kappa is then 0/0)."""
    n = int(cm.sum())
    # Chance agreement p_e = sum_k t_k p_k / n^2 equals 1 exactly when every true label
    # and every prediction is the same single class.
    if int(cm.sum(axis=1) @ cm.sum(axis=0)) == n * n:
        only = names[int(labels[0])]
        undefined["cohen_kappa"] = (
            f"every label and every prediction is class {only!r}, so chance agreement "
            f"is 1 and kappa is 0/0"
        )
        return None
    return float(cohen_kappa_score(labels, y_pred))


def _mcc(
    labels: np.ndarray, y_pred: np.ndarray, cm: np.ndarray, undefined: dict[str, str]
) -> float | None:
    """Matthews correlation, or ``None`` where its denominator is 0.

    scikit-learn returns 0.0 in that case; ``None`` keeps "undefined" apart from "no
    better than chance".
    """
    n = int(cm.sum())
    true_sum, pred_sum = cm.sum(axis=1), cm.sum(axis=0)
    if int(true_sum @ true_sum) == n * n:
        undefined["mcc"] = "y_true holds a single class, so MCC is 0/0"
        return None
    if int(pred_sum @ pred_sum) == n * n:
        undefined["mcc"] = "every prediction is the same class, so MCC is 0/0"
        return None
    return float(matthews_corrcoef(labels, y_pred))


def _roc_auc(
    labels: np.ndarray, probs: np.ndarray, names: list[str], undefined: dict[str, str]
) -> float | None:
    """ROC AUC (binary, or one-vs-rest macro), or ``None`` when a class has no samples."""
    counts = np.bincount(labels, minlength=len(names))
    missing = [name for name, count in zip(names, counts, strict=True) if count == 0]
    if missing:
        undefined["roc_auc"] = (
            f"classes {missing} have no samples in y_true; one-vs-rest AUC needs positives "
            f"and negatives for every class"
        )
        return None
    if len(names) == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(
        roc_auc_score(
            labels, probs, multi_class="ovr", average="macro", labels=np.arange(len(names))
        )
    )


def _log_loss(labels: np.ndarray, probs: np.ndarray, undefined: dict[str, str]) -> float | None:
    """Mean cross-entropy, or ``None`` with scikit-learn's reason if it refuses the input."""
    try:
        # Positional: the probability argument was renamed (y_pred -> y_proba) in sklearn 1.9.
        return float(log_loss(labels, probs, labels=np.arange(probs.shape[1])))
    except ValueError as exc:
        undefined["log_loss"] = str(exc)
        return None


def _top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` most probable.

    Ties rank the lower class index first, as ``argmax`` does, so ``top_1`` equals
    accuracy (scikit-learn's ``top_k_accuracy_score`` breaks ties the other way).
    """
    ranked = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean((ranked == labels[:, None]).any(axis=1)))


def _per_class(labels: np.ndarray, y_pred: np.ndarray, cm: np.ndarray,
               names: list[str]) -> dict[str, dict[str, float | int]]:
    """One-vs-rest counts and precision/recall/F1 for every class (``zero_division=0``)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, y_pred, labels=np.arange(len(names)), average=None, zero_division=0)
    n = int(cm.sum())
    table: dict[str, dict[str, float | int]] = {}
    for index, name in enumerate(names):
        tp = int(cm[index, index])
        fp = int(cm[:, index].sum()) - tp
        fn = int(cm[index, :].sum()) - tp
        table[name] = {"precision": float(precision[index]), "recall": float(recall[index]),
                       "f1": float(f1[index]), "support": int(support[index]),
                       "tp": tp, "fp": fp, "fn": fn, "tn": n - tp - fp - fn}
    return table
