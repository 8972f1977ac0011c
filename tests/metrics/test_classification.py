"""Classification metrics (ttm_experiments/metrics/classification.py): per class, multi-class AUROC, no 0.0
fallback, collapse detection, and the subject-resampled bootstrap interval."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ttm_experiments.metrics.classification import classification_metrics, collapsed_classes


def test_binary_metrics_and_per_class_accuracy():
    y = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.7, 0.3]])
    m = classification_metrics(y, probs, ("poor", "good"))
    assert m["acc/poor"] == pytest.approx(2 / 3) and m["acc/good"] == pytest.approx(1 / 2)
    assert m["acc"] == pytest.approx(3 / 5)
    assert m["balanced_acc"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))


def test_multiclass_auroc_is_real_one_vs_rest_macro():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    logits = rng.normal(size=(100, 4)) + 2.0 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, probs, ("a", "b", "c", "d"))
    assert 0.7 < m["auroc"] < 1.0
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert {f"acc/{c}" for c in "abcd"} <= m.keys()


def test_auroc_left_out_with_a_warning_when_a_class_is_missing(caplog):
    y = np.zeros(4, dtype=int)
    with caplog.at_level(logging.WARNING):
        m = classification_metrics(y, np.full((4, 2), 0.5), ("poor", "good"))
    assert "auroc" not in m and "auprc" not in m
    assert "undefined" in caplog.text


def test_label_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="expected"):
        classification_metrics(np.zeros(5, dtype=int), np.zeros((4, 2)), ("poor", "good"))


def test_collapse_detection():
    assert collapsed_classes({"acc/poor": 0.99, "acc/good": 0.02}, ("poor", "good"), 0.05) == ["good"]
    assert collapsed_classes({"acc/poor": 0.6, "acc/good": 0.5}, ("poor", "good"), 0.05) == []


def test_bootstrap_interval_resamples_subjects_and_brackets_the_point_value():
    from ttm_experiments.metrics.classification import bootstrap_auroc_ci

    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(20), 10)
    y = rng.integers(0, 2, 200)
    score = np.clip(0.35 * y + rng.normal(0.3, 0.25, 200), 0, 1)
    probs = np.stack([1 - score, score], axis=1)
    low, high = bootstrap_auroc_ci(y, probs, subjects, n_boot=300, seed=0)
    point = roc_auc_score(y, score)
    assert low < point < high and high - low > 0.02
    # a subject effect widens the interval compared with treating windows as independent
    shift = rng.normal(0, 0.3, 20)[subjects]
    clustered = np.clip(score + shift, 0, 1)
    probs_c = np.stack([1 - clustered, clustered], axis=1)
    low_s, high_s = bootstrap_auroc_ci(y, probs_c, subjects, n_boot=300, seed=0)
    low_w, high_w = bootstrap_auroc_ci(y, probs_c, np.arange(200), n_boot=300, seed=0)
    assert high_s - low_s > high_w - low_w


def _sklearn_bootstrap(y, probs, subjects, n_boot, seed):
    """The bootstrap as it was written first: one sklearn call per subject resample."""
    k = probs.shape[1]
    groups = np.unique(subjects)
    members = [np.flatnonzero(subjects == g) for g in groups]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        index = np.concatenate([members[i] for i in rng.integers(0, len(groups), len(groups))])
        if len(np.unique(y[index])) < k:
            continue
        p = probs[index]
        values.append(
            roc_auc_score(y[index], p[:, 1])
            if k == 2
            else roc_auc_score(y[index], p, multi_class="ovr", average="macro", labels=list(range(k)))
        )
    return np.array(values)


@pytest.mark.parametrize("k", [2, 3])
def test_the_vectorised_bootstrap_equals_sklearn_on_every_resample(k):
    """Subjects of different sizes, tied scores (rounded probabilities), resamples missing a class skipped."""
    from ttm_experiments.metrics.classification import bootstrap_auroc_ci, weighted_auroc

    rng = np.random.default_rng(k)
    subjects = np.repeat(np.arange(15), rng.integers(1, 12, 15))
    n = len(subjects)
    y = rng.integers(0, k - 1, n)
    y[np.isin(subjects, [0, 1]) & (rng.random(n) < 0.6)] = k - 1  # the last class: only in subjects 0 and 1
    logits = rng.normal(size=(n, k)) + np.eye(k)[y]
    probs = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 1)  # many ties
    probs /= probs.sum(1, keepdims=True)
    expected = _sklearn_bootstrap(y, probs, subjects, 400, 7)
    assert 0 < len(expected) < 400  # some resamples lack a class
    low, high = bootstrap_auroc_ci(y, probs, subjects, n_boot=400, seed=7)
    assert (low, high) == pytest.approx((np.quantile(expected, 0.025), np.quantile(expected, 0.975)), abs=1e-12)
    # and resample by resample, with weights: a window counted twice is two windows
    w = rng.integers(0, 3, (5, n)).astype(float)
    for row in w:
        rep = np.repeat(np.arange(n), row.astype(int))
        assert weighted_auroc(probs[:, 1], y == 1, row[None])[0] == pytest.approx(
            roc_auc_score(y[rep] == 1, probs[rep, 1]), abs=1e-12
        )


def test_bootstrap_interval_undefined_with_one_class():
    from ttm_experiments.metrics.classification import bootstrap_auroc_ci

    assert bootstrap_auroc_ci(np.zeros(10, int), np.full((10, 2), 0.5), np.arange(10), n_boot=50) is None
