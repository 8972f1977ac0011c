"""Paired, subject-resampled bootstrap of a difference in test AUROC between two models scored on the same windows.

Each replicate draws the subjects of a fold with replacement and scores **both** models on the same drawn
subjects, so what the two share (hard subjects, easy subjects) cancels in the difference. Across folds, each
replicate draws every fold's subjects independently and averages the per-fold differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score


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
    """AUROC (one-vs-rest macro for more than two classes); the binary case by ranks, fast enough to bootstrap."""
    k = probs.shape[1]
    if k > 2:
        return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(k))))
    positive = labels == 1
    n1 = int(positive.sum())
    n0 = len(labels) - n1
    ranks = rankdata(probs[:, 1])
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _replicates(fold: PairedFold, rng: np.random.Generator, n_boot: int, paired: bool) -> np.ndarray:
    """n_boot differences (NaN where a resample lacks a class): both models on the same subjects when paired."""
    groups = np.unique(fold.subjects)
    members = [np.flatnonzero(fold.subjects == g) for g in groups]
    k = fold.probs_a.shape[1]
    out = np.full(n_boot, np.nan)
    for b in range(n_boot):
        draws = [rng.integers(0, len(groups), len(groups)) for _ in range(1 if paired else 2)]
        ia, ib = (np.concatenate([members[i] for i in d]) for d in (draws[0], draws[-1]))
        if len(np.unique(fold.labels[ia])) < k or len(np.unique(fold.labels[ib])) < k:
            continue  # no AUROC without every class: the replicate is skipped, not scored
        out[b] = auroc(fold.labels[ia], fold.probs_a[ia]) - auroc(fold.labels[ib], fold.probs_b[ib])
    return out


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
