"""Self-supervised stages: masked-patch reconstruction and contrastive continuation, plus a linear probe.

TTM has no mask token, and `TinyTimeMixerForMaskedPrediction` is a forecasting variant, so masking is
done here: masked patches are hidden from the backbone's scaler through `past_observed_mask` and filled with
the window's observed mean (zero after scaling); a linear head maps each patch's hidden state back to the
patch, and the loss is the MSE on masked patches only, in the scaler's normalised units. The same code
serves PatchTST, whose model takes the same `past_observed_mask`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ttm_experiments.models.backbones import Backbone

log = logging.getLogger(__name__)

SSLKind = Literal["ssl_masked", "ssl_contrastive"]


@dataclass(frozen=True)
class SSLSettings:
    mask_ratio: float = 0.4
    stft_weight: float = 0.0  # weight of the multi-resolution STFT log-magnitude L1 term
    contrastive_weight: float = 1.0
    masked_weight: float = 1.0  # weight of the masked loss inside a contrastive stage
    temperature: float = 0.1
    projection_dim: int = 64


def patch_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """[batch, num_patches] bool, True = masked; exactly round(ratio * num_patches) per window (>= 1)."""
    n_masked = max(1, round(ratio * num_patches))
    scores = torch.rand(batch, num_patches, generator=generator)
    masked_idx = scores.argsort(dim=1)[:, :n_masked]
    mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    mask.scatter_(1, masked_idx, True)
    return mask


def observed_from_mask(mask: torch.Tensor, channels: int, patch_length: int) -> torch.Tensor:
    """Patch mask [B, P] -> observed indicator [B, C, P * patch_length] (the same patches in every channel)."""
    observed = (~mask).repeat_interleave(patch_length, dim=1)  # [B, T]
    return observed[:, None, :].expand(-1, channels, -1)


class ReconstructionHead(nn.Module):
    """Each patch's hidden state -> the patch's samples (normalised units)."""

    def __init__(self, d_model: int, patch_length: int):
        super().__init__()
        self.proj = nn.Linear(d_model, patch_length)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, C, P, D] -> [B, C, P, L]
        return self.proj(hidden)


class ProjectionHead(nn.Module):
    """Pooled features -> the embedding the contrastive loss compares."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, in_features), nn.GELU(), nn.Linear(in_features, dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden.mean(dim=2).flatten(1))


def stft_loss(pred: torch.Tensor, target: torch.Tensor, sizes: tuple[int, ...] = (32, 64, 128)) -> torch.Tensor:
    """Multi-resolution STFT log-magnitude L1 between signals [N, T]."""
    total = pred.new_zeros(())
    for n_fft in sizes:
        if n_fft > pred.shape[-1]:
            continue
        window = torch.hann_window(n_fft, device=pred.device)
        spec = lambda s: torch.stft(s, n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs()
        total = total + (torch.log1p(spec(pred)) - torch.log1p(spec(target))).abs().mean()
    return total


def masked_reconstruction(backbone: Backbone, head: ReconstructionHead, x: torch.Tensor, mask: torch.Tensor,
                          stft_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Loss parts for windows x [B, C, T] with patch mask [B, P]: `masked` (MSE on masked patches),
    `stft` (when weighted), `zero_baseline` (the MSE of predicting zeros: what a useless model scores)."""
    spec = backbone.spec
    observed = observed_from_mask(mask.to(x.device), x.shape[1], spec.patch_length)
    obs_f = observed.to(x.dtype)
    mean = (x * obs_f).sum(-1, keepdim=True) / obs_f.sum(-1, keepdim=True).clamp_min(1)
    filled = torch.where(observed, x, mean)  # masked samples carry nothing but the observed mean
    hidden, loc, scale = backbone(filled, observed=observed)
    target = (x - loc[..., None]) / scale[..., None]
    b, c, t = x.shape
    target_patches = target.reshape(b, c, t // spec.patch_length, spec.patch_length)
    pred = head(hidden)
    weights = mask.to(x.device)[:, None, :].expand(-1, c, -1).to(x.dtype)  # [B, C, P]
    per_patch = ((pred - target_patches) ** 2).mean(-1)
    parts = {
        "masked": (per_patch * weights).sum() / weights.sum(),
        "zero_baseline": ((target_patches**2).mean(-1) * weights).sum().detach() / weights.sum(),
    }
    if stft_weight > 0:
        parts["stft"] = stft_loss(pred.reshape(b * c, t), target.reshape(b * c, t))
    return parts


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random view of windows [B, C, T]: crop (70-100 %) resized back, noise, baseline wander, gain."""
    b, c, t = x.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator).to(x.device)
    std = x.std(dim=-1, keepdim=True).clamp_min(1e-6)
    views = []
    for i in range(b):
        length = int(t * (0.7 + 0.3 * float(rand(1))))
        start = int((t - length) * float(rand(1)))
        crop = x[i : i + 1, :, start : start + length]
        views.append(F.interpolate(crop, size=t, mode="linear", align_corners=False))
    out = torch.cat(views)
    time = torch.linspace(0, 1, t, device=x.device)
    phase = 2 * math.pi * rand(b, c, 1)
    wander = 0.3 * std * torch.sin(2 * math.pi * (0.5 + 1.5 * rand(b, c, 1)) * time + phase)
    noise = 0.05 * std * torch.randn(b, c, t, generator=generator).to(x.device)
    gain = 0.8 + 0.4 * rand(b, c, 1)
    return (out + wander + noise) * gain


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric NT-Xent: each view must pick its partner among the 2B - 1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


class SSLObjective(nn.Module):
    """The heads a self-supervised stage trains beside the backbone, and its loss."""

    def __init__(self, backbone: Backbone, kind: SSLKind, settings: SSLSettings):
        super().__init__()
        spec = backbone.spec
        self.backbone = backbone
        self.kind = kind
        self.settings = settings
        self.recon = ReconstructionHead(spec.d_model, spec.patch_length)
        self.proj = ProjectionHead(spec.num_channels * spec.d_model, settings.projection_dim)

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Loss parts and `loss` (the weighted total) for windows x [B, C, T]."""
        s = self.settings
        num_patches = x.shape[-1] // self.backbone.spec.patch_length
        mask = patch_mask(x.shape[0], num_patches, s.mask_ratio, generator)
        parts = masked_reconstruction(self.backbone, self.recon, x, mask, s.stft_weight)
        loss = parts["masked"] + s.stft_weight * parts.get("stft", 0.0)
        if self.kind == "ssl_contrastive":
            h1, _, _ = self.backbone(augment(x, generator))
            h2, _, _ = self.backbone(augment(x, generator))
            parts["contrastive"] = info_nce(self.proj(h1), self.proj(h2), s.temperature)
            loss = s.masked_weight * loss + s.contrastive_weight * parts["contrastive"]
        parts["loss"] = loss
        return parts


@torch.inference_mode()
def pooled_features(backbone: Backbone, x: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Frozen features per window: mean and max over patches per channel, plus location and log-scale."""
    backbone.eval()
    out = []
    for start in range(0, len(x), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(device)
        hidden, loc, scale = backbone(chunk)
        feats = torch.cat([hidden.mean(2).flatten(1), hidden.amax(2).flatten(1), loc,
                           torch.log(scale.clamp_min(1e-8))], dim=1)
        out.append(feats.float().cpu().numpy())
    return np.concatenate(out)


def linear_probe_auroc(backbone: Backbone, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                       val_y: np.ndarray, batch_size: int, device: torch.device) -> float:
    """AUROC on the validation windows of a logistic regression on frozen pooled features (seconds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", C=0.1))
    probe.fit(pooled_features(backbone, train_x, batch_size, device), train_y)
    scores = probe.predict_proba(pooled_features(backbone, val_x, batch_size, device))
    if scores.shape[1] == 2:
        return float(roc_auc_score(val_y, scores[:, 1]))
    return float(roc_auc_score(val_y, scores, multi_class="ovr", average="macro"))
