"""Classification metrics of one split, from scikit-learn.

Accuracy; per-class F1 (0 for a class with no gold and no predicted utterance); weighted F1 = the
per-class F1 averaged with the gold support as weight (what MER papers report as "w-F1"); macro F1 =
the plain mean over the classes that occur in gold or predictions (scikit-learn's default label
set). Utterances without a label (`IGNORE_LABEL`) are not scored but counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from model.batch import IGNORE_LABEL

SUMMARY_KEYS = ("accuracy", "weighted_f1", "macro_f1")


def classification_metrics(gold: np.ndarray, predicted: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Scores and counts of `predicted` against `gold` (label indices; IGNORE_LABEL = unlabelled)."""
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    labelled = gold != IGNORE_LABEL
    g, p = gold[labelled], predicted[labelled]
    classes = list(range(len(label_names)))
    confusion = confusion_matrix(g, p, labels=classes) if len(g) else np.zeros((len(classes),) * 2, dtype=np.int64)
    per_class = f1_score(g, p, labels=classes, average=None, zero_division=0) if len(g) else np.zeros(len(classes))
    scored = len(g) > 0
    return {
        "accuracy": float(accuracy_score(g, p)) if scored else 0.0,
        "weighted_f1": float(f1_score(g, p, average="weighted", zero_division=0)) if scored else 0.0,
        "macro_f1": float(f1_score(g, p, average="macro", zero_division=0)) if scored else 0.0,
        "per_class_f1": {name: float(per_class[i]) for i, name in enumerate(label_names)},
        "counts": {
            "utterances": int(len(gold)),
            "labelled": int(labelled.sum()),
            "unlabelled": int((~labelled).sum()),
            "gold": {name: int(confusion[i].sum()) for i, name in enumerate(label_names)},
            "predicted": {name: int(confusion[:, i].sum()) for i, name in enumerate(label_names)},
        },
    }


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The three headline scores of a metrics dict."""
    return {k: metrics[k] for k in SUMMARY_KEYS}


ORACLE_KEY = "test_best_epoch_oracle"  # in a training metrics.json: the best test epoch's scores (an upper bound)


def aggregate_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for a single run) of each headline score over runs.

    Each run is a metrics.json of `mer train` or `mer evaluate` (splits as keys, each holding
    SUMMARY_KEYS). Scored: every split that all runs have, and the test-oracle when all runs carry it
    (`<split>.<score>` keys, e.g. "test.weighted_f1", "test_best_epoch_oracle.weighted_f1")."""
    if not runs:
        raise ValueError("no run to aggregate")
    groups = [name for name in ("train", "dev", "test", ORACLE_KEY) if all(isinstance(r.get(name), dict) for r in runs)]
    values = {f"{g}.{k}": np.array([float(r[g][k]) for r in runs]) for g in groups for k in SUMMARY_KEYS}
    return {
        "count": len(runs),
        "mean": {key: float(v.mean()) for key, v in values.items()},
        "std": {key: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for key, v in values.items()},
    }
