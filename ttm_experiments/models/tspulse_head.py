"""TSPulse's own classification head (`backbone.head=tspulse`): granite-tsfm's decoder + classification head.

granite-tsfm's TSPulse classifier (`TSPulseForClassification`) does not pool the encoder's patches into an MLP as
the suite's head does: it runs the encoder's hidden state through a small TSPulse decoder (mixer blocks that may
also mix channels) and a linear head over every patch, normalised, with gated attention and the window's location
and scale. This module builds that part from the library's own class, `TSPulseDecoderWithClassificationHead`, on
the encoder's config with the `backbone.tspulse_head` options set first, as
`TSPulseForClassification.from_pretrained(path, **options)` does. The encoder stays the suite's `Backbone`, so the
unfreeze rules, the strict loading of the encoder and the frozen-backbone cache are unchanged. With a pretrained
snapshot the decoder and head start from the snapshot's tensors where name and shape agree (what `from_pretrained`
with `ignore_mismatched_sizes` does); the rest starts from the library's initialisation.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from torch import nn

from ttm_experiments.config.schema import (
    BackboneConf,
    BackboneKind,
    GatedActivation,
    HeadKind,
    StageKind,
    TrainConfig,
    TrainScope,
    TSPulseDecoderMode,
    TSPulseHeadConf,
)
from ttm_experiments.errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "decoder_with_head."  # the decoder + head's module name in TSPulseForClassification (and ...Reconstruction)


def check(c: TrainConfig) -> None:
    """`backbone.head` / `backbone.tspulse_head` where they cannot act, refused before anything is read."""
    b = c.backbone
    if b.head == HeadKind.suite:
        if b.tspulse_head != TSPulseHeadConf():
            raise ConfigError(
                "backbone.tspulse_head.* is set but backbone.head=suite, so it would do nothing. Fix: "
                "backbone.head=tspulse (a TSPulse backbone), or leave backbone.tspulse_head at its defaults."
            )
        return
    if b.kind != BackboneKind.tspulse:
        raise ConfigError(
            f"backbone.head=tspulse is TSPulse's own decoder + head; backbone={b.name} is {b.kind.value}. Fix: "
            "backbone=tspulse_r1 (also after debug=tiny, which swaps in ttm_tiny), or backbone.head=suite."
        )
    if b.head_hidden != BackboneConf.head_hidden:  # changed from the default (no preset sets it for TSPulse)
        raise ConfigError(
            f"backbone.head_hidden={b.head_hidden} is the suite head's width; TSPulse's head does not read it. Fix: "
            "leave backbone.head_hidden unset with backbone.head=tspulse (backbone.tspulse_head.head_reduce_d_model "
            "narrows TSPulse's head), or backbone.head=suite."
        )
    if b.scale_features:
        raise ConfigError(
            "backbone.scale_features=true is the suite head's option; TSPulse's head reads each window's location "
            "and scale itself. Fix: backbone.scale_features=false with backbone.head=tspulse."
        )
    if c.schedule.probe_c_grid:
        raise ConfigError(
            f"schedule={c.schedule.name} is a linear probe (logistic regression on pooled embeddings): it has no "
            "head, so backbone.head=tspulse would do nothing. Fix: backbone.head=suite, or a trained schedule."
        )
    h = b.tspulse_head
    if h.channel_virtual_expand_scale < 1:
        raise ConfigError(
            f"backbone.tspulse_head.channel_virtual_expand_scale={h.channel_virtual_expand_scale} must be >= 1 "
            "(1 = no virtual channels)"
        )
    if h.head_reduce_d_model is not None and h.head_reduce_d_model < 1:
        raise ConfigError(
            f"backbone.tspulse_head.head_reduce_d_model={h.head_reduce_d_model} must be >= 1, or null (no reduction)"
        )
    ssl = [s.name for s in c.schedule.stages if s.kind != StageKind.supervised]
    if h.channel_virtual_expand_scale > 1 and ssl:
        raise ConfigError(
            f"backbone.tspulse_head.channel_virtual_expand_scale={h.channel_virtual_expand_scale} widens the "
            f"encoder's channels, which the self-supervised stages {ssl} reconstruct one by one. Fix: "
            "backbone.tspulse_head.channel_virtual_expand_scale=1, or a schedule without self-supervised stages."
        )
    if h.mask_ratio is None:
        return
    if not 0 < h.mask_ratio < 1:
        raise ConfigError(f"backbone.tspulse_head.mask_ratio={h.mask_ratio} must be in (0, 1), or null (no masking)")
    masking = [s.name for s in c.schedule.stages if s.kind == StageKind.supervised and s.train != TrainScope.head]
    if not masking:
        raise ConfigError(
            f"backbone.tspulse_head.mask_ratio={h.mask_ratio}: TSPulse masks inside the encoder, which every "
            f"supervised stage of schedule={c.schedule.name} keeps frozen (run in evaluation mode), so it would never "
            "mask. Fix: backbone.tspulse_head.mask_ratio=null, or a stage that trains part of the backbone."
        )


def head_config(config, options: TSPulseHeadConf, *, num_classes: int, head_dropout: float):
    """A copy of the encoder's TSPulseConfig (random or a snapshot's) with the head's options, as
    `TSPulseForClassification.from_pretrained(path, **options)` builds it. `mask_ratio` null leaves a snapshot's
    own value (its masker's tensors then still load) and the encoder is never asked to mask (`Backbone.forward`)."""
    config = copy.deepcopy(config)
    config.head_gated_attention_activation = options.gated_attention_activation.value
    config.decoder_mode = options.decoder_mode.value
    config.head_reduce_d_model = options.head_reduce_d_model
    config.channel_virtual_expand_scale = options.channel_virtual_expand_scale
    if options.mask_ratio is not None:
        config.mask_ratio = options.mask_ratio
    # what every entry of the recipe's config.json sets alike (but one dataset's aggregation): fixed, not keys
    config.disable_mask_in_classification_eval = True  # masking while training only
    config.fft_time_consistent_masking = True
    config.head_aggregation, config.head_aggregation_dim = None, "patch"  # the head reads every patch
    config.num_targets = num_classes
    config.head_dropout = head_dropout  # the decoder's dropout too (TSPulseDecoder)
    config.loss = "cross_entropy"
    return config


class _WarningsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


class TSPulseHead(nn.Module):
    """`forward(hidden [B, C', P, D], loc [B, C], scale [B, C]) -> logits`, through granite-tsfm's
    `TSPulseDecoderWithClassificationHead` built on `encoder_config` (the encoder's config after
    `register_token_config_update`, what `TSPulseForClassification` hands its decoder). `spec` is the config the
    classifier was built from, as JSON: a checkpoint keeps it to rebuild the same model (`rebuild`)."""

    scale_features = True  # its head reads each window's location and scale: the answer depends on units

    def __init__(self, encoder_config, spec: str):
        super().__init__()
        from tsfm_public.models.tspulse.modeling_tspulse import TSPulseDecoderWithClassificationHead

        self.spec = spec
        self.decoder_with_head = TSPulseDecoderWithClassificationHead(copy.deepcopy(encoder_config))
        # what TSPulseForClassification's constructor ends with, for its decoder + head (the library's init policy;
        # its one INFO line per channel-mixing layer is left out of the run's log)
        library = logging.getLogger("tsfm_public.models.tspulse.modeling_tspulse")
        quiet = _WarningsOnly()  # a filter, not the library's level: other threads' records keep their level
        library.addFilter(quiet)
        try:
            self.decoder_with_head._post_init_with_init_policy()
        finally:
            library.removeFilter(quiet)

    def forward(self, hidden: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        out = self.decoder_with_head(
            decoder_input=hidden, loc=loc.unsqueeze(1), scale=scale.unsqueeze(1), return_dict=True
        )
        return out.prediction_outputs


def load_snapshot_head(head: TSPulseHead, path: Path, source: str) -> int:
    """Copy the snapshot's `decoder_with_head.*` tensors whose name and shape the head shares (its decoder, for a
    reconstruction snapshot); returns how many. The others stay as initialised; both counts are logged."""
    from ttm_experiments.models.checkpoint import _read_hf_directory

    _, state = _read_hf_directory(path)
    own = head.decoder_with_head.state_dict()
    found = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    shared = {k: v for k, v in found.items() if k in own and own[k].shape == v.shape}
    # every tensor of the head is given (the snapshot's where they fit, its own initialisation elsewhere): strict
    head.decoder_with_head.load_state_dict({**own, **shared}, strict=True)
    log.info(
        "backbone.head=tspulse: %d of the head's %d tensors from %s (decoder and head tensors of the same name and "
        "shape); %d of the snapshot's %d decoder/head tensors did not fit and %d of the head's start fresh",
        len(shared),
        len(own),
        source,
        len(found) - len(shared),
        len(found),
        len(own) - len(shared),
    )
    return len(shared)


def rebuild(spec: str, architecture: dict) -> tuple[BackboneConf, object]:
    """The BackboneConf and TSPulseConfig that rebuild a `backbone.head=tspulse` classifier from its checkpoint
    (`spec`: `TSPulseHead.spec`), for evaluation (no dropout, no masking)."""
    from tsfm_public.models.tspulse import TSPulseConfig

    fields = json.loads(spec)
    options = TSPulseHeadConf(
        gated_attention_activation=GatedActivation(fields["head_gated_attention_activation"]),
        decoder_mode=TSPulseDecoderMode(fields["decoder_mode"]),
        head_reduce_d_model=fields["head_reduce_d_model"],
        channel_virtual_expand_scale=fields["channel_virtual_expand_scale"],
    )
    conf = BackboneConf(
        name="checkpoint_tspulse",
        kind=BackboneKind.tspulse,
        block_pattern="",
        dropout=0.0,
        head_dropout=0.0,
        head=HeadKind.tspulse,
        tspulse_head=options,
        **{k: architecture[k] for k in ("context_length", "patch_length", "patch_stride", "d_model", "num_layers")},
    )
    return conf, TSPulseConfig.from_dict({**fields, "dropout": 0.0, "head_dropout": 0.0})
