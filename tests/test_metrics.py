"""metrics.py on small hand-made predictions: orientation, scikit-learn agreement, edge cases;
values pooled over seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import classification_report

from mnistcnn.reporting import metrics

NAMES = ["a", "b", "c", "d"]
# Class c (2) is never predicted; class d (3) has no test image but is predicted once.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 1])
PREDS = np.array([0, 0, 1, 1, 1, 1, 0, 3])


def test_confusion_has_true_classes_on_rows_and_every_class():
    cm = metrics.confusion(LABELS, PREDS, len(NAMES))
    assert cm.shape == (4, 4)
    assert cm[0].tolist() == [2, 1, 0, 0]  # true a: two right, one taken for b
    assert cm[:, 3].tolist() == [0, 1, 0, 0]  # one b predicted as d
    assert cm.sum() == len(LABELS)
    assert np.trace(cm) / cm.sum() == pytest.approx(metrics.accuracy(LABELS, PREDS))


def test_normalize_rows_gives_fractions_and_nan_for_an_absent_class():
    norm = metrics.normalize_rows(metrics.confusion(LABELS, PREDS, len(NAMES)))
    np.testing.assert_allclose(norm[:3].sum(axis=1), 1.0)
    assert np.isnan(norm[3]).all()


def test_per_class_agrees_with_scikit_learn_classification_report():
    rows = metrics.per_class(LABELS, PREDS, NAMES)
    ref = classification_report(LABELS, PREDS, labels=range(4), target_names=NAMES,
                                output_dict=True, zero_division=np.nan)
    assert [r["class"] for r in rows] == [*NAMES, "macro avg", "weighted avg"]
    for r in rows:
        expected = ref[r["class"]]
        got = [r["precision"], r["recall"], r["f1"], r["support"]]
        want = [expected["precision"], expected["recall"], expected["f1-score"],
                expected["support"]]
        np.testing.assert_allclose(got, want, equal_nan=True)


def test_undefined_values_are_nan_and_left_out_of_the_macro_average():
    rows = {r["class"]: r for r in metrics.per_class(LABELS, PREDS, NAMES)}
    assert np.isnan(rows["c"]["precision"])  # never predicted
    assert np.isnan(rows["d"]["recall"])  # no test image
    recalls = [rows[n]["recall"] for n in "abc"]
    assert rows["macro avg"]["recall"] == pytest.approx(np.mean(recalls))


def test_findings_name_the_never_predicted_absent_and_worst_classes():
    cm = metrics.confusion(LABELS, PREDS, len(NAMES))
    rows = metrics.per_class(LABELS, PREDS, NAMES)
    assert metrics.never_predicted(cm, NAMES) == ["c"]  # d is absent, so not "never predicted"
    assert metrics.absent(cm, NAMES) == ["d"]
    assert metrics.worst_class(rows)["class"] == "c"


def test_summary_keys_are_json_safe():
    cm = metrics.confusion(LABELS, PREDS, len(NAMES))
    keys = metrics.summary_keys(metrics.per_class(LABELS, PREDS, NAMES), cm, NAMES)
    assert keys["test/worst_class"] == "c"
    assert keys["test/worst_class_recall"] == 0.0
    assert keys["test/never_predicted"] == ["c"]
    assert 0 < keys["test/macro_recall"] < 1
    json.loads(json.dumps(keys, allow_nan=False))


def test_a_single_class_test_set_scores_that_class_alone():
    labels = np.full(5, 2)
    preds = np.array([2, 2, 2, 2, 0])
    cm = metrics.confusion(labels, preds, len(NAMES))
    rows = metrics.per_class(labels, preds, NAMES)
    keys = metrics.summary_keys(rows, cm, NAMES)
    assert keys["test/macro_recall"] == pytest.approx(0.8)  # absent classes do not count
    assert keys["test/worst_class"] == "c"
    assert metrics.absent(cm, NAMES) == ["a", "b", "d"]


def test_values_pool_into_mean_and_sample_std():
    stat = metrics.pooled([0.97, 0.98, 0.99])
    assert stat.mean == pytest.approx(0.98) and stat.std == pytest.approx(0.01) and stat.n == 3
    assert stat.values == [0.97, 0.98, 0.99]
    assert metrics.pooled([0.5]).std is None  # one run: no spread to show
    assert metrics.pooled([]) is None
