"""Metrics from scikit-learn (pipeline/training/metrics.py) against the project's former hand-written
definitions, kept here as the reference: the move to scikit-learn changed no reported number."""

from __future__ import annotations

import numpy as np
import pytest

from model.batch import IGNORE_LABEL
from pipeline.training.metrics import classification_metrics, summary


def former_definitions(gold: np.ndarray, predicted: np.ndarray, size: int) -> dict:
    """The confusion-matrix formulas the evaluator used before scikit-learn: per-class F1 =
    2 TP / (2 TP + FP + FN) (0 when the class has neither gold nor predictions), weighted by gold
    support; macro over the classes present in gold or predictions."""
    labelled = gold != IGNORE_LABEL
    g, p = gold[labelled], predicted[labelled]
    confusion = np.zeros((size, size), dtype=np.int64)
    np.add.at(confusion, (g, p), 1)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted_count = confusion.sum(axis=1).astype(np.float64), confusion.sum(axis=0).astype(np.float64)
    denominator = support + predicted_count
    f1 = np.divide(2 * tp, denominator, out=np.zeros(size), where=denominator > 0)
    total = support.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "macro_f1": float(f1[denominator > 0].mean()) if (denominator > 0).any() else 0.0,
        "per_class_f1": f1.tolist(), "gold": support.tolist(), "predicted": predicted_count.tolist(),
    }


@pytest.mark.parametrize("trial", range(40))
def test_scikit_learn_metrics_equal_the_former_definitions(trial):
    rng = np.random.default_rng(trial)
    size = int(rng.integers(2, 8))
    n = int(rng.integers(1, 80))
    gold = rng.integers(0, size, size=n)
    predicted = np.where(rng.random(n) < rng.random(), gold, rng.integers(0, size, size=n))
    if trial % 3 == 0:
        predicted[predicted == size - 1] = 0  # a class never predicted
    if trial % 4 == 0:
        gold[gold == 1] = 0  # a class never in gold
    gold[rng.random(n) < 0.1] = IGNORE_LABEL  # some utterances have no label
    names = [f"c{i}" for i in range(size)]
    ours, reference = classification_metrics(gold, predicted, names), former_definitions(gold, predicted, size)
    for key in ("accuracy", "weighted_f1", "macro_f1"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-12), key
    assert list(ours["per_class_f1"].values()) == pytest.approx(reference["per_class_f1"], abs=1e-12)
    assert list(ours["counts"]["gold"].values()) == reference["gold"]
    assert list(ours["counts"]["predicted"].values()) == reference["predicted"]
    assert ours["counts"]["unlabelled"] == int((gold == IGNORE_LABEL).sum())
    assert ours["counts"]["labelled"] + ours["counts"]["unlabelled"] == ours["counts"]["utterances"] == n


def test_a_split_without_labels_scores_zero_and_counts_everything():
    gold = np.full(6, IGNORE_LABEL)
    metrics = classification_metrics(gold, np.zeros(6, dtype=np.int64), ["a", "b"])
    assert summary(metrics) == {"accuracy": 0.0, "weighted_f1": 0.0, "macro_f1": 0.0}
    assert metrics["counts"]["unlabelled"] == 6 and metrics["counts"]["gold"] == {"a": 0, "b": 0}


def test_perfect_predictions_score_one():
    gold = np.array([0, 1, 2, 2, 1, 0])
    assert summary(classification_metrics(gold, gold.copy(), ["a", "b", "c"])) == {
        "accuracy": 1.0, "weighted_f1": 1.0, "macro_f1": 1.0}
