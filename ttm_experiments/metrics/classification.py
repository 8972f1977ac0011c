"""Classification metrics with per-class accuracy, and no silent fallbacks.

AUROC is one-vs-rest macro for more than two classes. When it is undefined (a split holds one class) it
is left out with a warning, never written as 0.0.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy import special
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities [N, K] from logits [N, K]."""
    return special.softmax(logits, axis=1)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """acc, balanced_acc, auroc, auprc, f1 and acc/<class> for labels [N] and probabilities [N, K].

    For two classes, auprc and f1 are those of the positive class (index 1, "good"); for more, macro.
    """
    y_true = np.asarray(y_true).reshape(-1)
    k = len(class_names)
    if probs.shape != (len(y_true), k):
        raise ValueError(f"probabilities have shape {probs.shape}, expected ({len(y_true)}, {k})")
    y_pred = probs.argmax(axis=1)
    out: dict[str, float] = {"acc": float((y_pred == y_true).mean())}
    present = np.unique(y_true)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about absent classes; handled explicitly below
        out["balanced_acc"] = float(balanced_accuracy_score(y_true, y_pred))
        if k == 2:
            out["f1"] = float(f1_score(y_true, y_pred, pos_label=1, zero_division=0))
        else:
            out["f1"] = float(f1_score(y_true, y_pred, labels=list(range(k)), average="macro", zero_division=0))
    if len(present) == k:
        if k == 2:
            out["auroc"] = float(roc_auc_score(y_true, probs[:, 1]))
            out["auprc"] = float(average_precision_score(y_true, probs[:, 1]))
        else:
            out["auroc"] = float(
                roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=list(range(k)))
            )
            onehot = np.eye(k)[y_true]
            out["auprc"] = float(average_precision_score(onehot, probs, average="macro"))
    else:
        missing = [class_names[i] for i in range(k) if i not in present]
        log.warning("AUROC/AUPRC undefined: no sample of class(es) %s in this split; not logged", missing)
    # per-class accuracy is each class's recall; a class absent from y_true gets NaN and is left out
    recalls = recall_score(y_true, y_pred, labels=list(range(k)), average=None, zero_division=np.nan)
    for name, acc in zip(class_names, recalls):
        if not np.isnan(acc):
            out[f"acc/{name}"] = float(acc)
    return out


def collapsed_classes(metrics: dict[str, float], class_names: tuple[str, ...], threshold: float) -> list[str]:
    """Classes whose accuracy fell below `threshold`: the model (almost) never predicts them."""
    return [c for c in class_names if metrics.get(f"acc/{c}", 1.0) < threshold]


def confusion(y_true: np.ndarray, probs: np.ndarray, num_classes: int) -> np.ndarray:
    return confusion_matrix(y_true, probs.argmax(axis=1), labels=list(range(num_classes)))


MIN_SUBJECTS_FOR_INTERVAL = 5  # fewer test subjects: an interval is printed with a caveat


def subject_weights(subjects: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """[n_boot, windows]: each resample draws the subjects with replacement; a window counts as often as its
    subject was drawn (the same as concatenating the drawn subjects' windows)."""
    groups, group_of = np.unique(subjects, return_inverse=True)
    draws = rng.integers(0, len(groups), (n_boot, len(groups)))
    counts = np.zeros((n_boot, len(groups)))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return counts[:, group_of]


def bootstrap_auroc_ci(
    y_true: np.ndarray, probs: np.ndarray, subjects: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile interval of AUROC, resampling **subjects** with replacement (windows of one subject are
    correlated, so resampling windows would give intervals that are too narrow). None when undefined.

    Hand-written: scipy's and sklearn's bootstraps resample samples, not groups of samples. A resample is a
    count per subject, so its AUROC is the AUROC of all windows weighted by their subject's count, computed for
    every resample at once (`weighted_auroc`; equal to sklearn's `roc_auc_score` on the resampled windows, and
    about 50x faster than calling it 1000 times)."""
    k = probs.shape[1]
    n_subjects = len(np.unique(subjects))
    if n_subjects < MIN_SUBJECTS_FOR_INTERVAL:
        log.warning(
            "the test AUROC interval rests on %d subject(s): too few to say how much the AUROC would move with other "
            "people (at least %d are needed); report it with that caveat, or use more test subjects (fewer folds)",
            n_subjects,
            MIN_SUBJECTS_FOR_INTERVAL,
        )
    weights = subject_weights(subjects, np.random.default_rng(seed), n_boot)  # (n_boot, windows)
    onehot = y_true[None, :] == np.arange(k)[:, None]  # (classes, windows)
    held = (weights @ onehot.T > 0).all(axis=1)  # a resample without some class has no AUROC: skipped, not 0
    weights = weights[held]
    if k == 2:
        values = weighted_auroc(probs[:, 1], onehot[1], weights)
    else:  # one-vs-rest, macro average (sklearn's multi_class="ovr", average="macro")
        values = np.mean([weighted_auroc(probs[:, c], onehot[c], weights) for c in range(k)], axis=0)
    if len(values) < n_boot // 2:
        log.warning(
            "bootstrap AUROC interval undefined: only %d of %d subject resamples held every class", len(values), n_boot
        )
        return None
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of `scores` for the `positive` windows, for each row of `weights` (a window counted w times):
    the probability that a positive scores above a negative, ties counting one half (Mann-Whitney), which is
    the area sklearn's `roc_auc_score` computes."""
    order = np.argsort(scores, kind="stable")
    s, pos, w = scores[order], positive[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # blocks of tied scores
    p = np.add.reduceat(w * pos, starts, axis=1)
    n = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(n, axis=1) - n  # negative weight strictly below each block
    return (p * (below + 0.5 * n)).sum(axis=1) / (p.sum(axis=1) * n.sum(axis=1))
