"""`metrics.classification_metrics` in torch, on the logits' device: the epoch metrics of a GPU run.

The same definitions as `metrics/classification.py` (scikit-learn's: accuracy, balanced accuracy, F1 of class 1
or macro,
one-vs-rest macro AUROC with ties counted half, average precision over distinct thresholds, per-class
recall) on a float32 softmax: for the same probabilities equal to scikit-learn's up to float64 rounding
(tests/metrics/test_device_metrics.py); torch's and scipy's float32 softmax can differ in the last bit, which can make
or break a tie between two windows' scores.

Why: on an H200 the inference of 16k windows takes ~150 ms, and scikit-learn's metrics on the host (~20 ms)
plus the logits' round trip made the evaluation 0.85 of a bare loop. Here they are a few dozen kernels
without a host sync, and the results come back in one transfer. The CPU keeps
`metrics.classification_metrics` (bit for bit as before).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def _auroc(score: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve as the Mann-Whitney statistic with mid-ranks: the trapezoid area of
    scikit-learn's ROC curve, ties counted half. NaN when a class is missing (the caller leaves it out)."""
    ordered = torch.sort(score).values
    # 1-based mean rank of each score's tie group (searchsorted instead of unique: no host sync)
    rank = (torch.searchsorted(ordered, score) + torch.searchsorted(ordered, score, right=True) + 1).double() / 2
    pos = positive.double()
    n1 = pos.sum()
    n0 = len(pos) - n1
    return ((rank * pos).sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def _average_precision(score: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """scikit-learn's average precision, sum over distinct thresholds t of (R(t) - R(t_prev)) * P(t), written
    per positive: each positive adds P at its own score's threshold (all ties included), divided by n1."""
    ordered, order = torch.sort(score)
    pos = positive[order].double()
    first = torch.searchsorted(ordered, ordered)  # first position of each score's tie group
    below = torch.cat([pos.new_zeros(1), pos.cumsum(0)])  # positives before position i
    n1 = below[-1]
    precision = (n1 - below[first]) / (len(pos) - first).double()  # among the windows scored >= this one
    return (pos * precision).sum() / n1


def classification_metrics_on_device(
    y_true: torch.Tensor,
    logits: torch.Tensor,
    class_names: tuple[str, ...],
    extra: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """`metrics.classification_metrics(y, softmax(logits), class_names)` for labels [N] and logits [N, K] on
    any device; `extra` (scalar tensors there, e.g. the loss) come first in the result, in the same transfer."""
    y = y_true.reshape(-1).long()
    k = len(class_names)
    if logits.shape != (len(y), k):
        raise ValueError(f"logits have shape {tuple(logits.shape)}, expected ({len(y)}, {k})")
    probs = torch.softmax(logits.float(), dim=1)  # float32, as scipy's softmax of the float32 logits on the host
    classes = torch.arange(k, device=y.device)
    truth = y[:, None] == classes  # [N, K] one-hot
    predicted = probs.argmax(dim=1)[:, None] == classes  # argmax: the first maximum, as numpy's
    confusion = truth.double().T @ predicted.double()  # exact counts (float64 holds integers to 2**53)
    tp, support, pred_count = confusion.diagonal(), confusion.sum(1), confusion.sum(0)
    recall = tp / support  # NaN for a class without samples: left out, as recall_score(zero_division=nan)
    f1_all = torch.where(support + pred_count > 0, 2 * tp / (support + pred_count), torch.zeros_like(tp))
    scored = [1] if k == 2 else range(k)  # two classes: the positive class's score; more: one-vs-rest macro
    columns = [(probs[:, j].contiguous(), truth[:, j]) for j in scored]
    auroc = torch.stack([_auroc(score, positive) for score, positive in columns]).mean()
    auprc = torch.stack([_average_precision(score, positive) for score, positive in columns]).mean()
    head = [tp.sum() / len(y), torch.nanmean(recall), f1_all[1] if k == 2 else f1_all.mean(), auroc, auprc]
    extra = extra or {}
    # note: the one device -> host sync of the epoch's metrics
    scalars = torch.stack([t.double().reshape(()) for t in (*extra.values(), *head)])
    values = torch.cat([scalars, support, recall]).tolist()
    out = dict(zip(extra, values))
    values = values[len(extra) :]
    acc, balanced, f1, auroc_v, auprc_v = values[:5]
    counts, recalls = values[5 : 5 + k], values[5 + k :]
    out |= {"acc": acc, "balanced_acc": balanced, "f1": f1}
    if all(c > 0 for c in counts):
        out |= {"auroc": auroc_v, "auprc": auprc_v}
    else:
        missing = [name for name, c in zip(class_names, counts) if c == 0]
        log.warning("AUROC/AUPRC undefined: no sample of class(es) %s in this split; not logged", missing)
    out |= {f"acc/{name}": r for name, r, c in zip(class_names, recalls, counts) if c > 0}
    return out
