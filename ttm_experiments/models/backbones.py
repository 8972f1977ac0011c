"""Backbones built from their configuration (never downloaded) and the classifier over them.

A backbone wraps a Hugging Face encoder (`model`, whose module names the unfreeze rules match) and returns
its hidden state `[batch, channels, patches, d_model]` with the per-window location and scale that its
scaler removed. `granite-tsfm` and `transformers` are imported only when a backbone is built.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ttm_experiments.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """The architecture: everything that decides the shapes of the backbone's parameters."""

    kind: str
    context_length: int
    patch_length: int
    patch_stride: int
    d_model: int
    num_layers: int
    num_channels: int
    adaptive_patching_levels: int = 0
    expansion_factor: int = 2
    num_attention_heads: int = 4
    ffn_dim: int = 256
    dropout: float = 0.0

    def architecture(self) -> dict:
        """The fields a checkpoint must agree on (dropout may differ)."""
        arch = asdict(self)
        arch.pop("dropout")
        return arch


class Backbone(nn.Module):
    """An encoder: `forward(x [B, C, T]) -> (hidden [B, C, P, D], loc [B, C], scale [B, C])`."""

    def __init__(self, spec: BackboneSpec, model: nn.Module):
        super().__init__()
        self.spec = spec
        self.model = model

    def forward(self, x: torch.Tensor, observed: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`observed` [B, C, T] (bool) hides samples from the scaler's statistics (masked pre-training)."""
        if x.shape[-1] != self.spec.context_length or x.shape[1] != self.spec.num_channels:
            raise ValueError(
                f"input shape {tuple(x.shape)} does not fit the backbone "
                f"[batch, {self.spec.num_channels}, {self.spec.context_length}]"
            )
        mask = None if observed is None else observed.transpose(1, 2).to(x.dtype)
        out = self.model(past_values=x.transpose(1, 2), past_observed_mask=mask)
        return out.last_hidden_state, out.loc.squeeze(1), out.scale.squeeze(1)


def _build_ttm(spec: BackboneSpec) -> nn.Module:
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerModel

    if spec.patch_length != spec.patch_stride:
        raise ConfigError("TTM needs backbone.patch_stride == backbone.patch_length")
    num_patches = spec.context_length // spec.patch_length
    if spec.context_length % spec.patch_length or num_patches % (2 ** max(spec.adaptive_patching_levels - 1, 0)):
        raise ConfigError(
            f"backbone.context_length={spec.context_length} must be a multiple of backbone.patch_length="
            f"{spec.patch_length}, with a patch count divisible by 2^(adaptive_patching_levels-1)"
        )
    config = TinyTimeMixerConfig(
        context_length=spec.context_length,
        patch_length=spec.patch_length,
        patch_stride=spec.patch_stride,
        num_input_channels=spec.num_channels,
        d_model=spec.d_model,
        num_layers=spec.num_layers,
        adaptive_patching_levels=spec.adaptive_patching_levels,
        expansion_factor=spec.expansion_factor,
        dropout=spec.dropout,
        scaling="std",
        mode="common_channel",
    )
    return TinyTimeMixerModel(config)


def _build_patchtst(spec: BackboneSpec) -> nn.Module:
    from transformers import PatchTSTConfig, PatchTSTModel

    config = PatchTSTConfig(
        num_input_channels=spec.num_channels,
        context_length=spec.context_length,
        patch_length=spec.patch_length,
        patch_stride=spec.patch_stride,
        d_model=spec.d_model,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_attention_heads,
        ffn_dim=spec.ffn_dim,
        dropout=spec.dropout,
        scaling="std",
        do_mask_input=False,
    )
    return PatchTSTModel(config)


BUILDERS: dict[str, Callable[[BackboneSpec], nn.Module]] = {"ttm": _build_ttm, "patchtst": _build_patchtst}


def build_backbone(spec: BackboneSpec) -> Backbone:
    """Build a randomly initialised backbone from its spec (weights are loaded separately)."""
    if spec.kind not in BUILDERS:
        raise ConfigError(f"backbone.kind={spec.kind!r} is unknown; choose one of {sorted(BUILDERS)}")
    return Backbone(spec, BUILDERS[spec.kind](spec))


class ClassificationHead(nn.Module):
    """Mean- and max-pooled patches per channel, plus the window's location and log-scale.

    The backbone's scaler normalises every window away, but amplitude carries signal quality (low
    perfusion, clipping), so the head sees `loc` and `log(scale)` again, batch-normalised.
    """

    def __init__(self, num_channels: int, d_model: int, num_classes: int, hidden: int, dropout: float,
                 scale_features: bool):
        super().__init__()
        self.scale_features = scale_features
        in_features = 2 * num_channels * d_model
        if scale_features:
            self.scale_norm = nn.BatchNorm1d(2 * num_channels)
            in_features += 2 * num_channels
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_features),
            nn.Linear(in_features, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, hidden: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([hidden.mean(dim=2), hidden.amax(dim=2)], dim=-1).flatten(1)
        if self.scale_features:
            extra = torch.cat([loc, torch.log(scale.clamp_min(1e-8))], dim=-1)
            pooled = torch.cat([pooled, self.scale_norm(extra)], dim=-1)
        return self.mlp(pooled)


class Classifier(nn.Module):
    """Backbone + head: `forward(x [B, C, T]) -> logits [B, num_classes]`."""

    def __init__(self, backbone: Backbone, head: ClassificationHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(*self.backbone(x))


def build_classifier(spec: BackboneSpec, num_classes: int, head_hidden: int, head_dropout: float,
                     scale_features: bool) -> Classifier:
    backbone = build_backbone(spec)
    head = ClassificationHead(spec.num_channels, spec.d_model, num_classes, head_hidden, head_dropout,
                              scale_features)
    return Classifier(backbone, head)
