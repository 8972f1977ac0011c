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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ttm_experiments.config.schema import OptimConf, StageConf, StageKind, TrainerConf
from ttm_experiments.data.base import WindowSet
from ttm_experiments.models.backbones import Backbone, amplitude_features, pool_patches
from ttm_experiments.training import signals
from ttm_experiments.training.optim import Precision, make_optimizer, warmup_cosine
from ttm_experiments.training.stages import EpochEnd, OnEpochEnd, StagePlan
from ttm_experiments.utils import faults

log = logging.getLogger(__name__)

MASKED_WEIGHT = 1.0  # weight of the masked loss inside a contrastive stage
PROJECTION_DIM = 64  # the contrastive embedding


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
        spec = lambda s, n_fft=n_fft, window=window: torch.stft(
            s, n_fft, hop_length=n_fft // 4, window=window, return_complex=True
        ).abs()
        total = total + (torch.log1p(spec(pred)) - torch.log1p(spec(target))).abs().mean()
    return total


def masked_reconstruction(
    backbone: Backbone, head: ReconstructionHead, x: torch.Tensor, mask: torch.Tensor, stft_weight: float = 0.0
) -> dict[str, torch.Tensor]:
    """Loss parts for windows x [B, C, T] with patch mask [B, P]: `masked` (MSE on masked patches),
    `stft` (when weighted), `zero_baseline` (the MSE of predicting zeros: what a useless model scores)."""
    patch_length = backbone.conf.patch_length
    observed = observed_from_mask(mask.to(x.device), x.shape[1], patch_length)
    obs_f = observed.to(x.dtype)
    mean = (x * obs_f).sum(-1, keepdim=True) / obs_f.sum(-1, keepdim=True).clamp_min(1)
    filled = torch.where(observed, x, mean)  # masked samples carry nothing but the observed mean
    hidden, loc, scale = backbone(filled, observed=observed)
    target = (x - loc[..., None]) / scale[..., None]
    b, c, t = x.shape
    target_patches = target.reshape(b, c, t // patch_length, patch_length)
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

    def __init__(self, backbone: Backbone, stage: StageConf):
        super().__init__()
        conf = backbone.conf
        self.backbone = backbone
        self.stage = stage
        self.recon = ReconstructionHead(conf.d_model, conf.patch_length)
        self.proj = ProjectionHead(backbone.num_channels * conf.d_model, PROJECTION_DIM)

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Loss parts and `loss` (the weighted total) for windows x [B, C, T]."""
        s = self.stage
        num_patches = x.shape[-1] // self.backbone.conf.patch_length
        mask = patch_mask(x.shape[0], num_patches, s.mask_ratio, generator)
        parts = masked_reconstruction(self.backbone, self.recon, x, mask, s.stft_weight)
        loss = parts["masked"] + s.stft_weight * parts.get("stft", 0.0)
        if s.kind == StageKind.ssl_contrastive:
            h1, _, _ = self.backbone(augment(x, generator))
            h2, _, _ = self.backbone(augment(x, generator))
            parts["contrastive"] = info_nce(self.proj(h1), self.proj(h2), s.temperature)
            loss = MASKED_WEIGHT * loss + s.contrastive_weight * parts["contrastive"]
        parts["loss"] = loss
        return parts


@torch.inference_mode()
def pooled_features(backbone: Backbone, x: np.ndarray, *, batch_size: int, device: torch.device) -> np.ndarray:
    """Frozen features per window: mean and max over patches per channel, plus location and log-scale."""
    backbone.eval()
    out = []
    for start in range(0, len(x), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(device)
        hidden, loc, scale = backbone(chunk)
        feats = torch.cat([pool_patches(hidden), amplitude_features(loc, scale)], dim=1)
        out.append(feats.float().cpu().numpy())
    return np.concatenate(out)


def linear_probe_auroc(
    backbone: Backbone, train: WindowSet, val: WindowSet, *, batch_size: int, device: torch.device
) -> float:
    """AUROC on the validation windows of a logistic regression on frozen pooled features (seconds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", C=0.1))
    probe.fit(pooled_features(backbone, train.signals, batch_size=batch_size, device=device), train.labels)
    scores = probe.predict_proba(pooled_features(backbone, val.signals, batch_size=batch_size, device=device))
    if scores.shape[1] == 2:
        return float(roc_auc_score(val.labels, scores[:, 1]))
    return float(roc_auc_score(val.labels, scores, multi_class="ovr", average="macro"))


def train_steps(n: int, batch_size: int) -> int:
    """Training batches per epoch: ceil(n / batch_size), less a last batch of one (no contrast, no BatchNorm)."""
    count = max(1, math.ceil(n / batch_size))
    return count - 1 if count > 1 and n % batch_size == 1 else count


class SSLRunner:
    """Trains the backbone of a classifier with a self-supervised objective, one stage at a time.

    Data may be a memory-mapped array (a large corpus): batches are read by index, never all at once.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        optim: OptimConf,
        trainer: TrainerConf,
        device: torch.device,
        seed: int,
        tracker,
        precision: Precision | None = None,
    ):
        self.backbone, self.optim, self.conf, self.device, self.tracker = backbone, optim, trainer, device, tracker
        # the same autocast and gradient scaler as the supervised loop (training/optim.py)
        self.precision = precision if precision is not None else Precision(device, trainer.amp)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + 1)

    def _batch(self, x: np.ndarray, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x[np.sort(index)], dtype=np.float32)).to(self.device)

    def _epoch(
        self, objective: SSLObjective, x: np.ndarray, optimizer=None, scheduler=None, desc: str = ""
    ) -> dict[str, float]:
        from tqdm.auto import tqdm

        training = optimizer is not None
        objective.train(training)
        # validation uses the same masks and views every epoch, so its curve is comparable
        generator = self.generator if training else torch.Generator().manual_seed(self.seed + 2)
        order = torch.randperm(len(x), generator=generator).numpy() if training else np.arange(len(x))
        size = self.optim.batch_size if training else self.optim.eval_batch_size
        batches = [order[i : i + size] for i in range(0, len(x), size)]
        if training:
            batches = batches[: train_steps(len(x), size)]
        sums: dict[str, torch.Tensor] = {}
        with torch.set_grad_enabled(training):
            for index in tqdm(batches, desc=desc, leave=False, disable=not (self.conf.progress and training)):
                with self.precision.autocast():
                    parts = objective(self._batch(x, index), generator)
                if training:
                    optimizer.zero_grad(set_to_none=True)
                    self.precision.step(parts["loss"], optimizer, grad_clip=self.optim.grad_clip)
                    scheduler.step()
                    signals.check()  # SIGTERM/SIGINT: stop after a whole step
                    faults.point("step")  # chaos test (bench/chaos.py): a SIGKILL after a step
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float() * len(index)
        out = {
            f"ssl_{k}" if k != "loss" else "ssl_loss": float(v) / sum(len(b) for b in batches) for k, v in sums.items()
        }
        if not math.isfinite(out["ssl_loss"]):
            raise FloatingPointError(f"{desc}: the self-supervised loss is {out['ssl_loss']}. Lower optim.ssl_lr.")
        return out

    def _setup(self, stage: StagePlan, train_size: int, resume: dict | None):
        """The objective (backbone + SSL heads, all trainable), its optimizer and schedule, restored on resume."""
        # on resume the heads' weights are loaded below: initialising them must not draw from the torch generator,
        # restored to where the killed run stood (the redone epoch's dropout draws from it; seen by bench/chaos.py)
        with torch.random.fork_rng(devices=[], enabled=resume is not None):
            objective = SSLObjective(self.backbone, stage.conf).to(self.device)
        objective.requires_grad_(True)
        heads = [p for n, p in objective.named_parameters() if not n.startswith("backbone.")]
        groups = [
            {"params": list(self.backbone.parameters()), "lr": stage.backbone_lr},
            {"params": heads, "lr": stage.head_lr},
        ]
        optimizer = make_optimizer(groups, weight_decay=self.optim.weight_decay, device=self.device)
        steps = train_steps(train_size, self.optim.batch_size) * stage.epochs  # the batches `_epoch` really runs
        scheduler = warmup_cosine(optimizer, steps, self.optim.warmup_frac)
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            objective.recon.load_state_dict(resume["ssl_heads"]["recon"])
            objective.proj.load_state_dict(resume["ssl_heads"]["proj"])
        return objective, optimizer, scheduler

    def run_stage(
        self,
        stage: StagePlan,
        train_x: np.ndarray,
        val_x: np.ndarray,
        epoch: int,
        *,
        resume: dict | None = None,
        on_epoch_end: OnEpochEnd | None = None,
    ) -> tuple[int, list[dict]]:
        """Train the stage's epochs; log `train/ssl_*` and `val/ssl_*` per epoch. Returns (last epoch, history).

        `resume` restores the optimizer, scheduler and SSL heads and skips the epochs already done;
        `on_epoch_end` writes the checkpoint."""
        name = stage.name
        objective, optimizer, scheduler = self._setup(stage, len(train_x), resume)
        log.info(
            "[%s] %s on %d windows (validation %d), mask ratio %.2f: the whole backbone trains",
            name,
            stage.kind,
            len(train_x),
            len(val_x),
            stage.conf.mask_ratio,
        )
        history, done = (resume or {}).get("ssl_history", []), 0
        if resume is not None:
            done = resume["stage_epoch"]
            log.info("[%s] resuming after epoch %d of %d", name, done, stage.epochs)
        for stage_epoch in range(done + 1, stage.epochs + 1):
            epoch += 1
            desc = f"[{name}] epoch {stage_epoch}/{stage.epochs}"
            train = self._epoch(objective, train_x, optimizer, scheduler, desc)
            val = self._epoch(objective, val_x, desc=desc)
            metrics = {**{f"train/{k}": v for k, v in train.items()}, **{f"val/{k}": v for k, v in val.items()}}
            history.append({"epoch": epoch, "train": train, "val": val})
            if on_epoch_end is not None:
                heads = {"recon": objective.recon.state_dict(), "proj": objective.proj.state_dict()}
                on_epoch_end(
                    EpochEnd(
                        stage_epoch,
                        epoch,
                        optimizer,
                        scheduler,
                        metrics,
                        {"ssl_heads": heads, "ssl_history": list(history)},
                    )
                )
            faults.point("epoch.ssl")  # chaos test: the state written, the metrics not yet logged
            self.tracker.log_metrics(metrics, step=epoch)
            log.info(
                "%s  train ssl_loss %.4f | val ssl_loss %.4f masked %.4f (predicting zeros: %.4f)",
                desc,
                train["ssl_loss"],
                val["ssl_loss"],
                val["ssl_masked"],
                val["ssl_zero_baseline"],
            )
        return epoch, history
