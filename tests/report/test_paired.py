"""The paired, subject-resampled bootstrap of an AUROC difference (ttm_experiments.report.paired)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ttm_experiments.report.paired import PairedFold, auroc, auroc_differences


def _fold(rng, n_subjects=30, per_subject=8):
    subjects = np.repeat(np.arange(n_subjects), per_subject)
    labels = (rng.random(len(subjects)) < 0.4).astype(int)
    labels[:2] = [0, 1]
    return subjects, labels


def _probs(score):
    p = 1 / (1 + np.exp(-score))
    return np.column_stack([1 - p, p])


def test_auroc_by_ranks_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = _probs(np.round(rng.normal(size=200) + labels, 1))  # rounded: many ties
    assert auroc(labels, probs) == pytest.approx(roc_auc_score(labels, probs[:, 1]))


def test_identical_predictions_give_the_interval_zero_zero():
    rng = np.random.default_rng(1)
    subjects, labels = _fold(rng)
    probs = _probs(rng.normal(size=len(labels)) + labels)
    per_fold, combined = auroc_differences([PairedFold(labels, subjects, probs, probs)] * 2, n_boot=200)
    for d in (*per_fold, combined):
        assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0) and not d.excludes_zero


def test_a_dominating_model_gives_an_interval_above_zero():
    rng = np.random.default_rng(2)
    subjects, labels = _fold(rng)
    good = _probs(rng.normal(size=len(labels)) + 3 * labels)
    weak = _probs(rng.normal(size=len(labels)) + 0.3 * labels)
    per_fold, combined = auroc_differences([PairedFold(labels, subjects, good, weak)], n_boot=300)
    assert per_fold[0].low > 0 and combined.excludes_zero and combined.estimate > 0.3


def test_pairing_narrows_the_interval_when_predictions_are_correlated():
    """Two models that share a per-subject effect: the paired interval is much narrower than the unpaired one."""
    rng = np.random.default_rng(3)
    subjects, labels = _fold(rng)
    shared = rng.normal(size=30)[subjects] * 2 + rng.normal(size=len(labels)) + labels
    a, b = _probs(shared + 0.1 * labels), _probs(shared + 0.2 * rng.normal(size=len(labels)))
    folds = [PairedFold(labels, subjects, a, b)]
    (paired,), _ = auroc_differences(folds, n_boot=300)
    (unpaired,), _ = auroc_differences(folds, n_boot=300, paired=False)
    assert paired.estimate == unpaired.estimate
    assert (paired.high - paired.low) < 0.5 * (unpaired.high - unpaired.low)


def test_models_scored_on_other_windows_are_refused():
    rng = np.random.default_rng(4)
    subjects, labels = _fold(rng)
    probs = _probs(rng.normal(size=len(labels)))
    with pytest.raises(ValueError, match="same windows"):
        auroc_differences([PairedFold(labels, subjects, probs, probs[:-1])])


def test_a_param_interpolated_from_the_compared_group_does_not_break_the_pair():
    """`unfreeze.pattern: ${backbone.block_pattern}` differs between a TTM and the SQI baseline: the runs still
    pair on `backbone`; a real difference elsewhere (`optim.lr`), or a number that only equals a backbone
    field by chance, still keeps them apart."""
    from types import SimpleNamespace

    from ttm_experiments.report.compare import comparisons

    def row(backbone: str, pattern: str, fold: int, **extra):
        params = {
            "backbone.name": backbone,
            "backbone.block_pattern": pattern,
            "backbone.num_layers": "2",
            "unfreeze.pattern": pattern,
            "unfreeze.last_n": "2",
            "optim.lr": "0.001",
            "dataset.fold": str(fold),
            "seed": "0",
            **extra,
        }
        return SimpleNamespace(
            params=params, state="finished", metrics={"test/auroc": 0.8}, run_id=f"{backbone}{fold}", start_time=0
        )

    rows = [row(b, p, f) for b, p in (("ttm_1024", r"mixers\.\d+"), ("baseline_sqi", "^$")) for f in (0, 1)]
    (comp,) = comparisons(rows, "backbone", "baseline_sqi")
    assert sorted(comp.runs) == [0, 1] and comp.value == "ttm_1024"
    apart = [row("ttm_1024", r"mixers\.\d+", 0, **{"optim.lr": "0.0003"}), row("baseline_sqi", "^$", 0)]
    assert comparisons(apart, "backbone", "baseline_sqi") == []
    by_chance = [row("ttm_1024", "a", 0, **{"unfreeze.last_n": "4"}), row("baseline_sqi", "b", 0)]
    assert comparisons(by_chance, "backbone", "baseline_sqi") == []
