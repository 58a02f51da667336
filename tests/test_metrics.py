"""Tests for imgclf.metrics, checked against values worked out by hand in the comments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from imgclf.metrics import compute_metrics, roc_curves

# Every test here also fails on any warning (sklearn's UndefinedMetricWarning included).
pytestmark = pytest.mark.filterwarnings("error")

approx = pytest.approx

# Binary: 6 cats (0) then 4 dogs (1); the number is P(dog).
#   cats: 0.1 0.2 0.3 0.4 0.45 | 0.8   -> 5 right, 1 called dog
#   dogs: 0.9 0.7 | 0.35 0.05          -> 2 right, 2 called cat
BINARY_Y = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
BINARY_P_DOG = [0.1, 0.2, 0.3, 0.4, 0.45, 0.8, 0.9, 0.7, 0.35, 0.05]
BINARY_PROBS = np.array([[1 - p, p] for p in BINARY_P_DOG])

# Three classes a, b, c; rows are (true class, probabilities) -> prediction.
MULTI_Y = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
MULTI_PROBS = np.array(
    [
        [0.8, 0.1, 0.1],  # a -> a
        [0.7, 0.2, 0.1],  # a -> a
        [0.6, 0.3, 0.1],  # a -> a
        [0.3, 0.6, 0.1],  # a -> b (a second: in top 2)
        [0.5, 0.4, 0.1],  # b -> a (b second: in top 2)
        [0.2, 0.7, 0.1],  # b -> b
        [0.1, 0.5, 0.4],  # b -> b
        [0.1, 0.3, 0.6],  # c -> c
        [0.1, 0.2, 0.7],  # c -> c
        [0.44, 0.52, 0.04],  # c -> b (c last: not in top 2)
    ]
)


def test_binary_matches_hand_computed_values() -> None:
    m = compute_metrics(BINARY_Y, BINARY_PROBS, ["cat", "dog"])

    # Confusion matrix (rows true): cat [5 1], dog [2 2].
    assert m["confusion_matrix"] == [[5, 1], [2, 2]]
    assert m["n_samples"] == 10
    assert m["accuracy"] == approx(7 / 10)
    # cat: TP 5, FP 2 (dogs called cat), FN 1, TN 2 -> P 5/7, R 5/6, F1 2*5/(10+2+1) = 10/13
    # dog: TP 2, FP 1, FN 2, TN 5 -> P 2/3, R 2/4, F1 2*2/(4+1+2) = 4/7
    assert m["per_class"]["cat"] == {
        "precision": approx(5 / 7),
        "recall": approx(5 / 6),
        "f1": approx(10 / 13),
        "support": 6,
        "tp": 5,
        "fp": 2,
        "fn": 1,
        "tn": 2,
    }
    assert m["per_class"]["dog"] == {
        "precision": approx(2 / 3),
        "recall": approx(1 / 2),
        "f1": approx(4 / 7),
        "support": 4,
        "tp": 2,
        "fp": 1,
        "fn": 2,
        "tn": 5,
    }
    # Macro: P (5/7 + 2/3)/2 = 29/42, R (5/6 + 1/2)/2 = 2/3, F1 (10/13 + 4/7)/2 = 61/91.
    assert m["precision_macro"] == approx(29 / 42)
    assert m["recall_macro"] == approx(2 / 3)
    assert m["f1_macro"] == approx(61 / 91)
    # Weighted by support 6:4: P 0.6*5/7 + 0.4*2/3 = 73/105, R = accuracy,
    # F1 0.6*10/13 + 0.4*4/7 = 314/455.
    assert m["precision_weighted"] == approx(73 / 105)
    assert m["recall_weighted"] == approx(7 / 10)
    assert m["f1_weighted"] == approx(314 / 455)
    # Balanced accuracy = mean recall = (5/6 + 1/2)/2.
    assert m["balanced_accuracy"] == approx(2 / 3)
    # Kappa: p_o = 0.7; true 6:4, predicted 7:3 -> p_e = 0.6*0.7 + 0.4*0.3 = 0.54;
    # (0.7 - 0.54) / (1 - 0.54) = 8/23.
    assert m["cohen_kappa"] == approx(8 / 23)
    # MCC: (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (10 - 2)/sqrt(3*4*7*6).
    assert m["mcc"] == approx(8 / math.sqrt(504))
    # AUC = share of (dog, cat) pairs where the dog scores higher, out of 4*6 = 24:
    # 0.9 beats 6, 0.7 beats 5, 0.35 beats 3 (0.1 0.2 0.3), 0.05 beats 0 -> 14/24.
    assert m["roc_auc"] == approx(14 / 24)
    # Log loss = -mean log P(true class).
    p_true = [0.9, 0.8, 0.7, 0.6, 0.55, 0.2, 0.9, 0.7, 0.35, 0.05]
    assert m["log_loss"] == approx(-sum(math.log(p) for p in p_true) / 10)
    # Default top_k (3, 5) are both >= 2 classes, so none is reported.
    assert m["top_k_accuracy"] == {}
    assert m["class_names"] == ["cat", "dog"]
    assert m["undefined"] == {}


def test_multiclass_matches_hand_computed_values() -> None:
    m = compute_metrics(MULTI_Y, MULTI_PROBS, ["a", "b", "c"], top_k=(1, 2, 5))

    # Rows true a, b, c; columns predicted. Column sums (predicted) 4, 4, 2.
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    assert m["accuracy"] == approx(7 / 10)
    # a: TP 3, FP 1, FN 1, TN 10-5 = 5 -> P 3/4, R 3/4, F1 3/4
    # b: TP 2, FP 2, FN 1, TN 5 -> P 1/2, R 2/3, F1 4/(4+2+1) = 4/7
    # c: TP 2, FP 0, FN 1, TN 7 -> P 1, R 2/3, F1 4/(4+0+1) = 4/5
    expected = {
        "a": (3 / 4, 3 / 4, 3 / 4, 4, 3, 1, 1, 5),
        "b": (1 / 2, 2 / 3, 4 / 7, 3, 2, 2, 1, 5),
        "c": (1.0, 2 / 3, 4 / 5, 3, 2, 0, 1, 7),
    }
    for name, (p, r, f1, support, tp, fp, fn, tn) in expected.items():
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == approx((p, r, f1)), name
        assert (row["support"], row["tp"], row["fp"], row["fn"], row["tn"]) == (
            support,
            tp,
            fp,
            fn,
            tn,
        ), name
    # Macro: P (3/4 + 1/2 + 1)/3 = 3/4; R (3/4 + 2/3 + 2/3)/3 = 25/36;
    # F1 (3/4 + 4/7 + 4/5)/3 = (105 + 80 + 112)/140/3 = 99/140.
    assert m["precision_macro"] == approx(3 / 4)
    assert m["recall_macro"] == approx(25 / 36)
    assert m["f1_macro"] == approx(99 / 140)
    # Weighted by support 4:3:3: P (3 + 1.5 + 3)/10 = 0.75; F1 (3 + 12/7 + 12/5)/10 = 249/350.
    assert m["precision_weighted"] == approx(3 / 4)
    assert m["recall_weighted"] == approx(7 / 10)
    assert m["f1_weighted"] == approx(249 / 350)
    assert m["balanced_accuracy"] == approx(25 / 36)
    # Kappa: p_e = (4*4 + 3*4 + 3*2)/100 = 0.34 -> (0.7 - 0.34)/0.66 = 6/11.
    assert m["cohen_kappa"] == approx(6 / 11)
    # Multi-class MCC: (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
    # with c = 7, s = 10, sum p_k t_k = 34, sum p_k^2 = 36, sum t_k^2 = 34
    # -> (70 - 34)/sqrt(64 * 66).
    assert m["mcc"] == approx(36 / math.sqrt(64 * 66))
    # One-vs-rest AUCs by counting (positive, negative) pairs the positive wins:
    # a: positives 0.8 0.7 0.6 0.3 vs negatives 0.5 0.2 0.1 0.1 0.1 0.44 -> 6+6+6+4 = 22/24
    # b: positives 0.4 0.7 0.5 vs negatives 0.1 0.2 0.3 0.6 0.3 0.2 0.52 -> 5+7+5 = 17/21
    # c: positives 0.6 0.7 0.04 vs negatives 0.1 x6, 0.4 -> 7+7+0 = 14/21
    assert m["roc_auc"] == approx((22 / 24 + 17 / 21 + 14 / 21) / 3)
    p_true = [0.8, 0.7, 0.6, 0.3, 0.4, 0.7, 0.5, 0.6, 0.7, 0.04]
    assert m["log_loss"] == approx(-sum(math.log(p) for p in p_true) / 10)
    # top_1 = accuracy; top_2 misses only the last row; top_5 >= 3 classes is left out.
    assert m["top_k_accuracy"] == {"top_1": approx(7 / 10), "top_2": approx(9 / 10)}
    assert m["undefined"] == {}


def test_roc_curves_per_class_auc_matches_hand_computed() -> None:
    curves = roc_curves(MULTI_Y, MULTI_PROBS, ["a", "b", "c"])
    assert list(curves) == ["a", "b", "c"]
    assert [area for _, _, area in curves.values()] == approx([22 / 24, 17 / 21, 14 / 21])
    fpr, tpr, _ = curves["a"]
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


def test_class_missing_from_y_true_gives_none_auc_and_still_lists_the_class() -> None:
    # True a a b b, predicted a c b b: class c has no samples but one prediction.
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = compute_metrics([0, 0, 1, 1], probs, ["a", "b", "c"])

    assert m["roc_auc"] is None
    assert "'c'" in m["undefined"]["roc_auc"]
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    # c: TP 0, FP 1 (an a called c), FN 0, TN 3; no samples so recall 0 (zero_division=0).
    assert m["per_class"]["c"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "tp": 0,
        "fp": 1,
        "fn": 0,
        "tn": 3,
    }
    # Balanced accuracy averages recall over classes present in y_true: (1/2 + 1)/2.
    assert m["balanced_accuracy"] == approx(3 / 4)
    # Macro recall counts c, which was predicted: (1/2 + 1 + 0)/3.
    assert m["recall_macro"] == approx(1 / 2)
    assert list(roc_curves([0, 0, 1, 1], probs, ["a", "b", "c"])) == ["a", "b"]


def test_single_class_leaves_undefined_metrics_none_with_reasons() -> None:
    # Three cats, all predicted cat: everything that needs a second class is 0/0.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    m = compute_metrics([0, 0, 0], probs, ["cat", "dog"])

    assert m["accuracy"] == 1.0
    assert m["roc_auc"] is None and m["cohen_kappa"] is None and m["mcc"] is None
    assert set(m["undefined"]) == {"roc_auc", "cohen_kappa", "mcc"}
    assert all(isinstance(reason, str) and reason for reason in m["undefined"].values())
    assert m["per_class"]["dog"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "tp": 0,
        "fp": 0,
        "fn": 0,
        "tn": 3,
    }
    assert roc_curves([0, 0, 0], probs, ["cat", "dog"]) == {}


def test_constant_prediction_makes_mcc_undefined_but_kappa_zero() -> None:
    # True a a b, always predicted a: p_o = 2/3, p_e = (2*3 + 1*0)/9 = 2/3 -> kappa 0.
    probs = np.array([[0.9, 0.1]] * 3)
    m = compute_metrics([0, 0, 1], probs, ["a", "b"])
    assert m["cohen_kappa"] == approx(0.0)
    assert m["mcc"] is None
    assert "prediction" in m["undefined"]["mcc"]
    assert m["roc_auc"] == approx(0.5)  # all scores tie


def test_class_names_may_be_a_numpy_array() -> None:
    names = np.unique(np.array(["dog", "cat", "dog"]))  # as often read from a label column
    m = compute_metrics(BINARY_Y, BINARY_PROBS, names)
    assert m == compute_metrics(BINARY_Y, BINARY_PROBS, ["cat", "dog"])
    assert m["class_names"] == ["cat", "dog"] and type(m["class_names"][0]) is str
    assert list(roc_curves(BINARY_Y, BINARY_PROBS, names)) == ["cat", "dog"]


def test_result_is_json_serialisable() -> None:
    for y, probs, names in (
        (BINARY_Y, BINARY_PROBS.astype(np.float32), ["cat", "dog"]),
        (np.array(MULTI_Y), MULTI_PROBS, ["a", "b", "c"]),
        ([0, 0], np.array([[0.5, 0.5, 0.0]] * 2), ["a", "b", "c"]),
    ):
        m = compute_metrics(y, probs, names, top_k=(2,))
        assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_float32_rows_that_round_away_from_one_are_accepted() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = compute_metrics(rng.integers(0, 7, size=50), probs, [f"c{i}" for i in range(7)])
    assert 0.0 <= m["roc_auc"] <= 1.0
    assert set(m["top_k_accuracy"]) == {"top_3", "top_5"}


@pytest.mark.parametrize(
    ("y_true", "probs", "names", "match"),
    [
        ([0, 1, 0], np.full((2, 2), 0.5), ["a", "b"], r"y_true has 3 labels but probs has 2 rows"),
        ([0, 1], np.array([0.5, 0.5]), ["a", "b"], r"probs must be a 2-D array.*\(2,\)"),
        ([0, 1], np.full((2, 3), 1 / 3), ["a", "b"], r"probs has 3 columns but class_names has 2"),
        ([0, 2], np.full((2, 2), 0.5), ["a", "b"], r"y_true holds labels outside 0\.\.1.*\[2\]"),
        ([0, -1], np.full((2, 2), 0.5), ["a", "b"], r"outside 0\.\.1.*\[-1\]"),
        (["a", "b"], np.full((2, 2), 0.5), ["a", "b"], r"y_true must hold integer class indices"),
        ([0.5, 1], np.full((2, 2), 0.5), ["a", "b"], r"y_true must hold integer class indices"),
        ([0, 1], np.array([[2.0, -1.0], [0.5, 0.5]]), ["a", "b"], r"probs must lie in 0\.\.1"),
        ([0, 1], np.array([[0.2, 0.2], [0.5, 0.5]]), ["a", "b"], r"row 0 sums to 0\.4"),
        ([0, 1], np.array([[np.nan, 0.5], [0.5, 0.5]]), ["a", "b"], r"probs must be finite"),
        ([], np.zeros((0, 2)), ["a", "b"], r"at least one sample"),
        ([0, 1], np.full((2, 2), 0.5), ["a", "a"], r"class_names must be unique.*'a'"),
        ([0, 0], np.ones((2, 1)), ["a"], r"at least 2 classes"),
        ([0, 1], np.full((2, 2), 0.5), "ab", r"class_names must be a sequence"),
        ([0, 1], np.full((2, 2), 0.5), np.array([["a", "b"]]), r"class_names must be a sequence"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(y_true, probs, names, match) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(y_true, probs, names)


@pytest.mark.parametrize("top_k", [(0,), (2, -1), (1.5,), (True,)])
def test_invalid_top_k_raises(top_k) -> None:
    with pytest.raises(ValueError, match=r"top_k must hold positive integers"):
        compute_metrics(MULTI_Y, MULTI_PROBS, ["a", "b", "c"], top_k=top_k)


def test_roc_curves_validates_like_compute_metrics() -> None:
    with pytest.raises(ValueError, match=r"probs has 2 columns but class_names has 3"):
        roc_curves([0, 1], np.full((2, 2), 0.5), ["a", "b", "c"])
