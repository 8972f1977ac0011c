"""Paired, hierarchical bootstrap of a difference in test AUROC between two models scored on the same windows.

A fold may hold several training runs of each model (seeds). Each replicate first draws the fold's seeds with
replacement (training randomness), then the fold's subjects with replacement (who happens to be tested), and
scores **both** models of each drawn seed on the same drawn subjects, so what the two share (hard subjects, easy
subjects) cancels in the difference; the replicate's difference is the mean over its drawn seeds. Across folds,
each replicate draws every fold independently and averages the per-fold differences. With one seed per fold the
interval speaks to the subjects only, not to training randomness (`Difference.n_seeds` says how many there were).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ttm_experiments.metrics.classification import subject_weights, weighted_auroc


@dataclass(frozen=True)
class PairedFold:
    """One fold's test windows: labels [N], subject ids [N], and each model's probabilities [N, K]."""

    labels: np.ndarray
    subjects: np.ndarray
    probs_a: np.ndarray
    probs_b: np.ndarray


@dataclass(frozen=True)
class Difference:
    """AUROC(a) - AUROC(b) on all windows (mean over seeds), with its percentile interval from `n` usable
    replicates; `n_seeds`: training runs per model behind it (the fewest of any fold)."""

    estimate: float
    low: float
    high: float
    n: int
    n_seeds: int = 1

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


def _replicates(seeds: list[PairedFold], rng: np.random.Generator, n_boot: int, paired: bool) -> np.ndarray:
    """n_boot differences of one fold (NaN where a resample lacks a class): seeds drawn with replacement, then
    subjects; both models of a seed on the same subjects when paired."""
    fold = seeds[0]
    weights_a = subject_weights(fold.subjects, rng, n_boot)
    weights_b = weights_a if paired else subject_weights(fold.subjects, rng, n_boot)
    k = fold.probs_a.shape[1]
    onehot = fold.labels[:, None] == np.arange(k)
    usable = ((weights_a @ onehot) > 0).all(axis=1) & ((weights_b @ onehot) > 0).all(axis=1)
    per_seed = np.stack(
        [_auroc_rows(s.labels, s.probs_a, weights_a) - _auroc_rows(s.labels, s.probs_b, weights_b) for s in seeds]
    )  # [S, n_boot]
    drawn = rng.integers(0, len(seeds), (n_boot, len(seeds)))  # the seeds of each replicate
    out = per_seed[drawn, np.arange(n_boot)[:, None]].mean(axis=1)
    return np.where(usable, out, np.nan)  # no AUROC without every class: such a replicate is skipped


def _interval(estimate: float, values: np.ndarray, level: float, n_seeds: int) -> Difference:
    n_boot = len(values)
    values = values[np.isfinite(values)]
    alpha = (1 - level) / 2
    if len(values) < max(1, n_boot // 2):  # most resamples lacked a class: no interval, as bootstrap_auroc_ci
        return Difference(estimate, float("nan"), float("nan"), 0, n_seeds)
    low, high = float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
    return Difference(estimate, low, high, len(values), n_seeds)


def same_windows(a: PairedFold, b: PairedFold) -> bool:
    """Two pairs of runs scored on the same test windows (labels and subjects, in order)."""
    return np.array_equal(a.labels, b.labels) and np.array_equal(a.subjects, b.subjects)


def _check_windows(i: int, seeds: list[PairedFold]) -> None:
    first = seeds[0]
    for fold in seeds:
        if fold.probs_a.shape != fold.probs_b.shape or len(fold.labels) != len(fold.probs_a):
            raise ValueError(
                f"fold {i}: the two models were not scored on the same windows "
                f"({fold.probs_a.shape} vs {fold.probs_b.shape}, {len(fold.labels)} labels)"
            )
        if not same_windows(fold, first):
            raise ValueError(f"fold {i}: its seeds were tested on different windows (another split or data)")


def auroc_differences(
    folds: Sequence[PairedFold | Sequence[PairedFold]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    paired: bool = True,
) -> tuple[list[Difference], Difference]:
    """Per fold and across folds (the mean of the per-fold differences): AUROC(a) - AUROC(b) with intervals. A fold
    is one pair of runs, or a sequence of pairs, one per training seed, on the same windows."""
    per_fold, draws, estimates = [], [], []
    for i, fold in enumerate(folds):
        seeds = [fold] if isinstance(fold, PairedFold) else list(fold)
        _check_windows(i, seeds)
        estimate = float(np.mean([auroc(s.labels, s.probs_a) - auroc(s.labels, s.probs_b) for s in seeds]))
        values = _replicates(seeds, np.random.default_rng([seed, i]), n_boot, paired)
        per_fold.append(_interval(estimate, values, level, len(seeds)))
        draws.append(values)
        estimates.append(estimate)
    combined = np.mean(np.vstack(draws), axis=0) if draws else np.array([])
    n_seeds = min((d.n_seeds for d in per_fold), default=0)
    return per_fold, _interval(float(np.mean(estimates)) if estimates else float("nan"), combined, level, n_seeds)
