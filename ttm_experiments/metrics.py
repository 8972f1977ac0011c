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
            out["auroc"] = float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=list(range(k))))
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


def bootstrap_auroc_ci(y_true: np.ndarray, probs: np.ndarray, subjects: np.ndarray, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of AUROC, resampling **subjects** with replacement (windows of one subject are
    correlated, so resampling windows would give intervals that are too narrow). None when undefined.

    Hand-written: scipy's and sklearn's bootstraps resample samples, not groups of samples."""
    k = probs.shape[1]
    groups = np.unique(subjects)
    members = [np.flatnonzero(subjects == g) for g in groups]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        index = np.concatenate([members[i] for i in rng.integers(0, len(groups), len(groups))])
        y = y_true[index]
        if len(np.unique(y)) < k:
            continue  # a resample without some class has no AUROC; it is skipped, not scored 0
        p = probs[index]
        values.append(roc_auc_score(y, p[:, 1]) if k == 2 else
                      roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))))
    if len(values) < n_boot // 2:
        log.warning("bootstrap AUROC interval undefined: only %d of %d subject resamples held every class",
                    len(values), n_boot)
        return None
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
