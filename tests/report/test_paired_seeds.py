"""The paired bootstrap over seeds and subjects (report/paired.py): what a replicate scores, and what seeds add."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ttm_experiments.metrics.classification import subject_weights
from ttm_experiments.report.paired import PairedFold, _auroc_rows, auroc, auroc_differences


def _windows(rng, n=400, subjects=25, classes=2):
    labels = rng.integers(0, classes, n)
    return labels, rng.integers(0, subjects, n)


def _probs(rng, labels, skill, classes=2):
    logits = rng.normal(size=(len(labels), classes)) + skill * np.eye(classes)[labels]
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("classes", [2, 3])
def test_a_weighted_replicate_is_the_auroc_of_the_concatenated_resample(classes):
    rng = np.random.default_rng(0)
    labels, subjects = _windows(rng, classes=classes)
    probs = _probs(rng, labels, 1.0, classes)
    weights = subject_weights(subjects, np.random.default_rng(1), 4)
    groups = np.unique(subjects)
    draws = np.random.default_rng(1).integers(0, len(groups), (4, len(groups)))  # the same draws, spelled out
    for b in range(4):
        index = np.concatenate([np.flatnonzero(subjects == groups[i]) for i in draws[b]])
        score = probs[index, 1] if classes == 2 else probs[index]
        expected = roc_auc_score(labels[index], score, multi_class="ovr", average="macro")
        assert _auroc_rows(labels, probs, weights[b : b + 1])[0] == pytest.approx(expected, abs=1e-12)
    assert auroc(labels, probs) == pytest.approx(
        roc_auc_score(labels, probs[:, 1] if classes == 2 else probs, multi_class="ovr", average="macro")
    )


def test_with_seeds_the_estimate_is_the_mean_over_seeds_and_one_seed_is_said():
    rng = np.random.default_rng(2)
    labels, subjects = _windows(rng)
    seeds = [PairedFold(labels, subjects, _probs(rng, labels, 1.2), _probs(rng, labels, 0.8)) for _ in range(3)]
    (fold,), combined = auroc_differences([seeds], n_boot=300)
    expected = np.mean([auroc(labels, s.probs_a) - auroc(labels, s.probs_b) for s in seeds])
    assert fold.estimate == pytest.approx(expected) and fold.n_seeds == 3 and combined.n_seeds == 3
    (one,), _ = auroc_differences([seeds[0]], n_boot=300)
    assert one.n_seeds == 1


def test_seeds_that_disagree_widen_the_interval_beyond_the_subjects_alone():
    """Training randomness is variance too: runs whose difference flips sign between seeds cannot give the narrow
    interval that one seed's subject bootstrap gives."""
    rng = np.random.default_rng(3)
    labels, subjects = _windows(rng, n=1200, subjects=60)
    base = _probs(rng, labels, 1.0)
    seeds = []
    for shift in (1.6, 0.4, 1.8, 0.2):  # model a beats b on two seeds, loses on two
        seeds.append(PairedFold(labels, subjects, _probs(rng, labels, shift), base))
    (single,), _ = auroc_differences([seeds[0]], n_boot=400)
    (pooled,), _ = auroc_differences([seeds], n_boot=400)
    assert pooled.high - pooled.low > 1.5 * (single.high - single.low)


def test_seeds_tested_on_other_windows_are_refused():
    rng = np.random.default_rng(4)
    labels, subjects = _windows(rng)
    probs = _probs(rng, labels, 1.0)
    other = PairedFold(rng.permutation(labels), subjects, probs, probs)
    with pytest.raises(ValueError, match="its seeds were tested on different windows"):
        auroc_differences([[PairedFold(labels, subjects, probs, probs), other]])
