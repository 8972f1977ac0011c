"""Backbones built from their configuration (or a checkpoint's config.json) and the classifier over them.

A backbone wraps a Hugging Face encoder (`model`, whose module names the unfreeze rules match) and returns
its hidden state `[batch, channels, patches, d_model]` with the per-window location and scale that its
scaler removed. `granite-tsfm` and `transformers` are imported only when a backbone is built.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

import torch
from torch import nn

from ttm_experiments.config.schema import BackboneConf, BackboneKind, HeadKind
from ttm_experiments.errors import ConfigError
from ttm_experiments.models.dropout import use_fast_dropout

log = logging.getLogger(__name__)

# the fields that decide the shapes of the backbone's parameters (dropout does not): a checkpoint must agree on them
ARCHITECTURE_KEYS = (
    "context_length",
    "patch_length",
    "patch_stride",
    "d_model",
    "num_layers",
    "adaptive_patching_levels",
    "expansion_factor",
    "num_attention_heads",
    "ffn_dim",
)


def mantis_version_unused(conf: BackboneConf) -> str:
    return (
        f"backbone.mantis_version={conf.mantis_version.value} is set but backbone={conf.name} is {conf.kind.value}, "
        "so it would do nothing. Fix: backbone=mantis_v2 / mantis_8m, or backbone.mantis_version=null."
    )


class Backbone(nn.Module):
    """An encoder: `forward(x [B, C, T]) -> (hidden [B, C, P, D], loc [B, C], scale [B, C])`."""

    # whether `hidden` depends on each window's amplitude (location, scale): the TTM family's scaler removes it
    reads_amplitude = False

    def __init__(self, conf: BackboneConf, num_channels: int, model: nn.Module):
        super().__init__()
        self.conf = conf
        self.num_channels = num_channels
        self.model = model

    def architecture(self) -> dict:
        """What a checkpoint records and must match (adaptive patching exists only in TTM)."""
        arch = {
            "kind": self.conf.kind.value,
            "num_channels": self.num_channels,
            **{k: getattr(self.conf, k) for k in ARCHITECTURE_KEYS},
        }
        if self.conf.kind != BackboneKind.ttm:
            arch["adaptive_patching_levels"] = 0
        return arch

    def forward(
        self, x: torch.Tensor, observed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`observed` [B, C, T] (bool) hides samples from the scaler's statistics (masked pre-training)."""
        if x.shape[-1] != self.conf.context_length or x.shape[1] != self.num_channels:
            raise ValueError(
                f"input shape {tuple(x.shape)} does not fit the backbone "
                f"[batch, {self.num_channels}, {self.conf.context_length}]"
            )
        mask = None if observed is None else observed.transpose(1, 2).to(x.dtype)
        # we mask (self-supervised stages), not TSPulse; but backbone.head=tspulse with a mask_ratio is TSPulse's
        # classification recipe, which masks training windows (never in evaluation)
        tspulse_masks = self.conf.head == HeadKind.tspulse and self.conf.tspulse_head.mask_ratio is not None
        own = tspulse_masks and self.training and observed is None
        extra = {"enable_masking": own} if self.conf.kind == BackboneKind.tspulse else {}
        out = self.model(past_values=x.transpose(1, 2), past_observed_mask=mask, **extra)
        return out.last_hidden_state, out.loc.squeeze(1), out.scale.squeeze(1)


def _dropout(conf: BackboneConf, default: float) -> float:
    """`backbone.dropout`, or `default` (the library's) when it is null."""
    return default if conf.dropout is None else conf.dropout


def _shared(conf: BackboneConf, num_channels: int) -> dict:
    """The Hugging Face config arguments TTM, TSPulse and PatchTST name alike."""
    return {
        "context_length": conf.context_length,
        "patch_length": conf.patch_length,
        "patch_stride": conf.patch_stride,
        "num_input_channels": num_channels,
        "d_model": conf.d_model,
    }


def _check_patching(conf: BackboneConf) -> None:
    if conf.patch_length != conf.patch_stride:
        raise ConfigError(f"{conf.kind.value} needs backbone.patch_stride == backbone.patch_length")
    num_patches = conf.context_length // conf.patch_length
    levels = conf.adaptive_patching_levels if conf.kind == BackboneKind.ttm else 0
    if conf.context_length % conf.patch_length or num_patches % (2 ** max(levels - 1, 0)):
        raise ConfigError(
            f"backbone.context_length={conf.context_length} must be a multiple of backbone.patch_length="
            f"{conf.patch_length}, with a patch count divisible by 2^(adaptive_patching_levels-1)"
        )


def _ttm_config(conf: BackboneConf, num_channels: int):
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig

    _check_patching(conf)
    return TinyTimeMixerConfig(
        **_shared(conf, num_channels),
        num_layers=conf.num_layers,
        dropout=_dropout(conf, 0.2),
        adaptive_patching_levels=conf.adaptive_patching_levels,
        expansion_factor=conf.expansion_factor,
        mode="common_channel",
        scaling="std",
    )


def _tspulse_config(conf: BackboneConf, num_channels: int):
    """TSPulse with its dual (time + FFT) embedding and 8 register tokens, as the public model."""
    from tsfm_public.models.tspulse import TSPulseConfig

    _check_patching(conf)
    return TSPulseConfig(
        **_shared(conf, num_channels),
        num_layers=conf.num_layers,
        dropout=_dropout(conf, 0.2),
        expansion_factor=conf.expansion_factor,
        mode="common_channel",
        scaling="revin",
        fuse_fft=True,
        patch_register_tokens=8,
        mask_block_length=conf.patch_length,
    )


def _patchtst_config(conf: BackboneConf, num_channels: int):
    from transformers import PatchTSTConfig

    # PatchTST has no single `dropout`: backbone.dropout sets its attention, positional and feed-forward dropout
    # (not path_dropout, which is stochastic depth, another regulariser)
    p = _dropout(conf, 0.0)
    return PatchTSTConfig(
        **_shared(conf, num_channels),
        num_hidden_layers=conf.num_layers,
        scaling="std",
        num_attention_heads=conf.num_attention_heads,
        ffn_dim=conf.ffn_dim,
        do_mask_input=False,
        attention_dropout=p,
        positional_dropout=p,
        ff_dropout=p,
    )


def _make_model(kind: str, config) -> nn.Module:
    if kind == "ttm":
        from tsfm_public.models.tinytimemixer import TinyTimeMixerModel

        return TinyTimeMixerModel(config)
    if kind == "tspulse":
        from tsfm_public.models.tspulse import TSPulseModel
        from tsfm_public.models.tspulse.modeling_tspulse import register_token_config_update

        # what TSPulseForClassification does before it builds its backbone: the register tokens widen the
        # patch mixers, so a saved config.json becomes the encoder its weights were trained in
        config.check_and_init_preprocessing(task="classification")
        return TSPulseModel(register_token_config_update(config))
    from transformers import PatchTSTModel

    return PatchTSTModel(config)


CONFIGS: dict[str, Callable[[BackboneConf, int], object]] = {
    "ttm": _ttm_config,
    "tspulse": _tspulse_config,
    "patchtst": _patchtst_config,
}


def build_backbone(conf: BackboneConf, *, num_channels: int, hf_config: object | None = None) -> Backbone:
    """Build a randomly initialised backbone from `conf`, or from `hf_config` (a checkpoint's own Hugging Face
    config, already checked against `conf` by `models.pretrained`); weights are loaded separately."""
    kind = conf.kind.value
    if conf.mantis_version is not None and conf.kind != BackboneKind.mantis:  # validate refuses it earlier
        raise ConfigError(mantis_version_unused(conf))
    if conf.kind == BackboneKind.chronos_bolt:  # a frozen-feature backbone of its own (models/chronos.py)
        from ttm_experiments.models import chronos

        return chronos.build_backbone(conf, num_channels, hf_config)
    if conf.kind == BackboneKind.mantis:  # mantis-tsfm's own network, one embedding per channel (models/mantis.py)
        from ttm_experiments.models import mantis

        return mantis.build(conf, num_channels=num_channels, spec=hf_config)
    if kind not in CONFIGS:
        raise ConfigError(f"backbone.kind={kind!r} is unknown; choose one of {sorted(CONFIGS)}")
    config = hf_config if hf_config is not None else CONFIGS[kind](conf, num_channels)
    return Backbone(conf, num_channels, _make_model(kind, config))


def pool_patches(hidden: torch.Tensor) -> torch.Tensor:
    """Mean and max over patches, per channel: [B, C, P, D] -> [B, C * 2D]."""
    return torch.cat([hidden.mean(dim=2), hidden.amax(dim=2)], dim=-1).flatten(1)


def amplitude_features(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The window's location and log-scale, which the backbone's scaler removed: [B, 2C]."""
    return torch.cat([loc, torch.log(scale.clamp_min(1e-8))], dim=-1)


class ClassificationHead(nn.Module):
    """Mean- and max-pooled patches per channel, plus the window's location and log-scale.

    The backbone's scaler normalises every window away, but amplitude carries signal quality (low
    perfusion, clipping), so the head sees `loc` and `log(scale)` again, batch-normalised.
    """

    def __init__(
        self, num_channels: int, d_model: int, num_classes: int, hidden: int, dropout: float, scale_features: bool
    ):
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
        pooled = pool_patches(hidden)
        if self.scale_features:
            pooled = torch.cat([pooled, self.scale_norm(amplitude_features(loc, scale))], dim=-1)
        return self.mlp(pooled)


class Classifier(nn.Module):
    """Backbone + head: `forward(x [B, C, T]) -> logits [B, num_classes]`."""

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(*self.backbone(x))


def build_classifier(
    conf: BackboneConf,
    *,
    num_channels: int,
    num_classes: int,
    hf_config: object | None = None,
    head_dropout: float | None = None,
) -> Classifier:
    """The backbone of `conf` (or of `hf_config`, a checkpoint's config) and its classification head
    (`conf.head_*`, `conf.scale_features`; `head_dropout` when `conf.head_dropout` is null, else 0.2), or
    TSPulse's own with `conf.head=tspulse` (models/tspulse_head.py)."""
    dropout = conf.head_dropout if conf.head_dropout is not None else (0.2 if head_dropout is None else head_dropout)
    if conf.head == HeadKind.tspulse:  # TSPulse's decoder + head, its options set on the encoder's config first
        from ttm_experiments.models.tspulse_head import TSPulseHead, head_config

        base = hf_config if hf_config is not None else _tspulse_config(conf, num_channels)
        config = head_config(base, conf.tspulse_head, num_classes=num_classes, head_dropout=dropout)
        spec = json.dumps(config.to_dict())
        backbone = build_backbone(conf, num_channels=num_channels, hf_config=config)
        head = TSPulseHead(backbone.model.config, spec)
    else:
        # the backbone first: the random draws keep their order
        backbone = build_backbone(conf, num_channels=num_channels, hf_config=hf_config)
        head = ClassificationHead(
            num_channels, conf.d_model, num_classes, conf.head_hidden, dropout, conf.scale_features
        )
    model = Classifier(backbone, head)
    if conf.fast_dropout:
        # same semantics as nn.Dropout, a fraction of its cost on CPU (bench/dropout.py); names and state_dict unchanged
        use_fast_dropout(model)
    return model
