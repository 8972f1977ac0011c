"""The supervised losses: cross-entropy, class-weighted ("balanced") or focal, chosen by `optim.loss`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ttm_experiments.config.schema import LossKind, OptimConf


class FocalLoss(nn.Module):
    def __init__(self, weight: torch.Tensor | None, gamma: float):
        super().__init__()
        self.register_buffer("weight", weight)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=1)
        logp_t = logp.gather(1, target[:, None]).squeeze(1)
        loss = -((1 - logp_t.exp()) ** self.gamma) * logp_t
        if self.weight is None:
            return loss.mean()
        # the weighted mean, as nn.CrossEntropyLoss(weight=...) takes it: divided by the targets' total weight
        w = self.weight[target]
        return (loss * w).sum() / w.sum()


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """scikit-learn's 'balanced' weights, n / (num_classes * count), of the training split. A class the split
    lacks (no target carries it, so its weight is never used) gets n / num_classes."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.flatnonzero(np.bincount(labels, minlength=num_classes))
    weights = np.full(num_classes, len(labels) / num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels) * (len(present) / num_classes)
    return torch.tensor(weights, dtype=torch.float32)


def build_loss(optim: OptimConf, train_labels: np.ndarray, num_classes: int) -> nn.Module:
    weight = class_weights(train_labels, num_classes) if optim.loss != LossKind.ce else None
    if optim.loss == LossKind.focal:
        return FocalLoss(weight, optim.focal_gamma)
    return nn.CrossEntropyLoss(weight=weight)
