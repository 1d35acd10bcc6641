"""Predictions -> accuracy, confusion matrix and per-class report (scikit-learn); values
over seeds -> their mean and spread (Stat).

Pure functions on arrays of true and predicted class indices; nothing here reads
files or touches a model. Per-class values that are undefined (the precision of a
class never predicted, the recall of a class absent from the test set) are NaN and
left out of the macro and weighted averages, as scikit-learn's zero_division=np.nan
does: a test set without some class must not drag the averages down with zeros.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

AVERAGES = ("macro", "weighted")
COLUMNS = ("class", "precision", "recall", "f1", "support")


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(preds)))


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [k, k]: true class on rows, predicted class on columns, every class present."""
    return confusion_matrix(labels, preds, labels=range(num_classes))


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row as fractions of its true class; NaN for a class absent from the test set."""
    totals = cm.sum(axis=1, keepdims=True).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, cm / totals, np.nan)


def per_class(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """One row per class, then `macro avg` and `weighted avg`: precision, recall, f1, support."""
    k = len(class_names)
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=range(k),
                                                 zero_division=np.nan)
    rows = [{"class": name, "precision": float(p[i]), "recall": float(r[i]),
             "f1": float(f[i]), "support": int(s[i])} for i, name in enumerate(class_names)]
    for average in AVERAGES:
        p, r, f, _ = precision_recall_fscore_support(labels, preds, labels=range(k),
                                                     average=average, zero_division=np.nan)
        rows.append({"class": f"{average} avg", "precision": float(p), "recall": float(r),
                     "f1": float(f), "support": int(len(labels))})
    return rows


def never_predicted(cm: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Classes in the test set that the model never predicts (an empty confusion column)."""
    return [name for i, name in enumerate(class_names)
            if cm[i].sum() > 0 and cm[:, i].sum() == 0]


def absent(cm: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Classes with no test image: their recall is undefined."""
    return [name for i, name in enumerate(class_names) if cm[i].sum() == 0]


def worst_class(rows: list[dict]) -> dict:
    """The class row with the lowest recall among classes that have test images."""
    classes = [r for r in rows[: -len(AVERAGES)] if r["support"] > 0]
    return min(classes, key=lambda r: r["recall"])


def summary_keys(rows: list[dict], cm: np.ndarray, class_names: Sequence[str]) -> dict:
    """The per-class findings that go into summary.json (None where a value is undefined)."""
    macro = rows[-len(AVERAGES)]
    worst = worst_class(rows)
    return {"test/macro_recall": _finite(macro["recall"]),
            "test/macro_f1": _finite(macro["f1"]),
            "test/worst_class": worst["class"],
            "test/worst_class_recall": _finite(worst["recall"]),
            "test/never_predicted": never_predicted(cm, class_names)}


def _finite(x: float) -> float | None:
    # JSON has no NaN: an undefined value is written as null.
    return None if math.isnan(x) else x


@dataclass
class Stat:
    """A value pooled over runs (seeds): its mean, sample standard deviation and n."""

    mean: float
    std: float | None  # None for a single run: there is no spread to show
    n: int
    values: list[float] = field(default_factory=list)


def pooled(values: Sequence[float]) -> Stat | None:
    """The Stat of values; None when there are none."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values), list(values))
