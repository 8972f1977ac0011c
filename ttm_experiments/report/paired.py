"""Paired, subject-resampled bootstrap of a difference in test AUROC between two models scored on the same windows.

Each replicate draws the subjects of a fold with replacement and scores **both** models on the same drawn
subjects, so what the two share (hard subjects, easy subjects) cancels in the difference. Across folds, each
replicate draws every fold's subjects independently and averages the per-fold differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttm_experiments.metrics.classification import weighted_auroc


@dataclass(frozen=True)
class PairedFold:
    """One fold's test windows: labels [N], subject ids [N], and each model's probabilities [N, K]."""

    labels: np.ndarray
    subjects: np.ndarray
    probs_a: np.ndarray
    probs_b: np.ndarray


@dataclass(frozen=True)
class Difference:
    """AUROC(a) - AUROC(b) on all windows, with its percentile interval from `n` usable replicates."""

    estimate: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUROC (one-vs-rest macro for more than two classes), as scikit-learn's `roc_auc_score`."""
    return float(_auroc_rows(labels, probs, np.ones((1, len(labels))))[0])


def _auroc_rows(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of `weights` [R, N] (window i counted weights[r, i] times); one-vs-rest macro for more
    than two classes. NaN in a row where a class has no weight."""
    k = probs.shape[1]
    scored = [1] if k == 2 else range(k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean([weighted_auroc(probs[:, j], labels == j, weights) for j in scored], axis=0)


def subject_weights(subjects: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """[n_boot, N]: each replicate draws the subjects with replacement; a window counts as often as its subject
    was drawn (the same as concatenating the drawn subjects' windows)."""
    groups, index = np.unique(subjects, return_inverse=True)
    draws = rng.integers(0, len(groups), (n_boot, len(groups)))
    counts = np.zeros((n_boot, len(groups)))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1)
    return counts[:, index]


def _replicates(fold: PairedFold, rng: np.random.Generator, n_boot: int, paired: bool) -> np.ndarray:
    """n_boot differences (NaN where a resample lacks a class): both models on the same subjects when paired."""
    weights_a = subject_weights(fold.subjects, rng, n_boot)
    weights_b = weights_a if paired else subject_weights(fold.subjects, rng, n_boot)
    k = fold.probs_a.shape[1]
    onehot = fold.labels[:, None] == np.arange(k)
    usable = ((weights_a @ onehot) > 0).all(axis=1) & ((weights_b @ onehot) > 0).all(axis=1)
    out = _auroc_rows(fold.labels, fold.probs_a, weights_a) - _auroc_rows(fold.labels, fold.probs_b, weights_b)
    return np.where(usable, out, np.nan)  # no AUROC without every class: such a replicate is skipped


def _interval(estimate: float, values: np.ndarray, level: float) -> Difference:
    values = values[np.isfinite(values)]
    alpha = (1 - level) / 2
    if len(values) == 0:
        return Difference(estimate, float("nan"), float("nan"), 0)
    return Difference(estimate, float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)), len(values))


def auroc_differences(
    folds: list[PairedFold], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95, paired: bool = True
) -> tuple[list[Difference], Difference]:
    """Per fold and across folds (the mean of the per-fold differences): AUROC(a) - AUROC(b) with intervals."""
    per_fold, draws, estimates = [], [], []
    for i, fold in enumerate(folds):
        if fold.probs_a.shape != fold.probs_b.shape or len(fold.labels) != len(fold.probs_a):
            raise ValueError(
                f"fold {i}: the two models were not scored on the same windows "
                f"({fold.probs_a.shape} vs {fold.probs_b.shape}, {len(fold.labels)} labels)"
            )
        estimate = auroc(fold.labels, fold.probs_a) - auroc(fold.labels, fold.probs_b)
        values = _replicates(fold, np.random.default_rng([seed, i]), n_boot, paired)
        per_fold.append(_interval(estimate, values, level))
        draws.append(values)
        estimates.append(estimate)
    combined = np.mean(np.vstack(draws), axis=0) if draws else np.array([])
    return per_fold, _interval(float(np.mean(estimates)) if estimates else float("nan"), combined, level)
