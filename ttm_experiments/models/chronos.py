"""Chronos-Bolt (amazon/chronos-bolt-tiny, -mini, -small) as a frozen-feature backbone for `schedule=linear_probe`.

Chronos-Bolt is a forecaster: a T5 encoder reads patches of 16 samples of one series (each scaled by the series' mean
and standard deviation), a decoder and a quantile head forecast. Its pipeline offers `ChronosBoltPipeline.embed()`,
the encoder's output `[batch, patches (+1 [REG] token), d_model]` and the (mean, std) it scaled by. That is what this
backbone returns, per channel (Chronos is univariate: each channel is embedded on its own), through the library's own
`ChronosBoltModelForForecasting.encode`, so the probe pools exactly the library's embedding (the tests compare it
with `.embed()`): hidden `[B, C, patches + 1, D]`, loc and scale `[B, C]`.

Probe-only: the suite never trains it. A supervised stage would fine-tune a forecaster's encoder the suite has no
unfreeze rules or recorded evidence for, and a self-supervised stage would need its masking; both are refused before
training (`check_schedule`), naming `schedule=linear_probe`. `backbone.head` options, checkpoints and `ttm-predict`
therefore never meet it.

Weights: by hub id + revision through the Hugging Face cache (`models/hub.py`); the snapshot's config.json builds
the model (the preset's keys are what the experiment expects, compared with it) and every tensor of its
model.safetensors is loaded strictly; the two token embeddings that T5 ties to `shared.weight` (and that
`save_pretrained` therefore leaves out) are set from it explicitly. `backbone.pretrained_path=null`: the same shape
with random weights, drawn from `seed`.

Input length: windows of `backbone.context_length` samples (the dataset resamples each window to it). It must be a
multiple of the patch length (the library would pad a shorter patch with NaN on the left, unobserved) and at most
the model's context (2048 for the public models; the library would keep only the last 2048 samples): either is a
one-line error here, never a silent pad or crop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ttm_experiments.config.schema import BackboneConf, BackboneKind, TrainConfig
from ttm_experiments.errors import CheckpointError, ConfigError
from ttm_experiments.models.backbones import Backbone, Classifier

if TYPE_CHECKING:
    import torch

    from ttm_experiments.models.hub import PretrainedSource

log = logging.getLogger(__name__)

ARCHITECTURE = "ChronosBoltModelForForecasting"
# the public models' shared settings (tiny/mini/small: d_kv 64 with 4/8/8 heads gives 8.65/21.2/47.7 M parameters,
# the published 9/21/48 M); only a random backbone uses them: with weights, the snapshot's config.json decides
PUBLIC = {
    "d_kv": 64,
    "model_context": 2048,
    "prediction_length": 64,
    "quantiles": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "use_reg_token": True,
    "dropout_rate": 0.1,
}
# our key -> the config.json key (patching lives in its `chronos_config`)
EXPECTED = {
    "d_model": "d_model",
    "num_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "ffn_dim": "d_ff",
    "patch_length": "chronos_config.input_patch_size",
    "patch_stride": "chronos_config.input_patch_stride",
}
# the T5 token embeddings tied to `shared.weight`: save_pretrained writes only the source
TIED = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
# tensors a Chronos-Bolt file may hold that the model has not (the library ignores them on load too)
IGNORED = ("lm_head.weight",)
PROBE_ONLY = (
    "a frozen-feature backbone (Chronos-Bolt's encoder, as ChronosBoltPipeline.embed returns it): the suite only "
    "probes it, with schedule=linear_probe"
)


def is_chronos(conf: BackboneConf) -> bool:
    return conf.kind == BackboneKind.chronos_bolt


def check_schedule(c: TrainConfig) -> None:
    """Refuse, before any data or weights are read, a schedule that would train a Chronos-Bolt backbone."""
    if not is_chronos(c.backbone) or c.schedule.probe_c_grid:
        return
    stages = ", ".join(f"{s.name} ({s.kind.value}, train {s.train.value})" for s in c.schedule.stages)
    raise ConfigError(
        f"backbone={c.backbone.name} is {PROBE_ONLY}; schedule={c.schedule.name} would train it or a head on it "
        f"(stages: {stages}). Fix: schedule=linear_probe."
    )


def check(c: TrainConfig) -> None:
    """At config validation (no model, no data): the window length the public models take whole."""
    if is_chronos(c.backbone):
        check_context(c.backbone, PUBLIC["model_context"], f"backbone={c.backbone.name}")


def check_context(conf: BackboneConf, model_context: int, source: str) -> None:
    """The window length Chronos-Bolt takes whole: a multiple of its patch, at most its context."""
    if conf.patch_length != conf.patch_stride:
        raise ConfigError(
            f"backbone={conf.name}: the suite reads Chronos-Bolt's patches without overlap (the public models: 16 "
            f"and 16), but backbone.patch_length={conf.patch_length} and backbone.patch_stride={conf.patch_stride}; "
            "overlapping patches could leave the last samples unread. Fix: equal values."
        )
    if conf.context_length % conf.patch_length or not 0 < conf.context_length <= model_context:
        fit = max(conf.patch_length, min(model_context, conf.context_length) // conf.patch_length * conf.patch_length)
        raise ConfigError(
            f"backbone.context_length={conf.context_length} cannot be read whole by {source}: Chronos-Bolt takes a "
            f"multiple of its patch ({conf.patch_length}) up to its context ({model_context}); it would pad the "
            f"window with unobserved samples or keep only its last {model_context}. Fix: "
            f"backbone.context_length={fit} (the dataset resamples each window to it)."
        )


def random_config(conf: BackboneConf):
    """A T5 config of the preset's shape, as the public config.json files spell it (for a random backbone)."""
    from transformers import T5Config

    return T5Config(
        d_model=conf.d_model,
        d_ff=conf.ffn_dim,
        d_kv=PUBLIC["d_kv"],
        num_heads=conf.num_attention_heads,
        num_layers=conf.num_layers,
        num_decoder_layers=conf.num_layers,
        dropout_rate=PUBLIC["dropout_rate"] if conf.dropout is None else conf.dropout,
        feed_forward_proj="relu",
        dense_act_fn="relu",
        is_gated_act=False,
        vocab_size=2,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        architectures=[ARCHITECTURE],
        chronos_pipeline_class="ChronosBoltPipeline",
        chronos_config={
            "context_length": PUBLIC["model_context"],
            "prediction_length": PUBLIC["prediction_length"],
            "input_patch_size": conf.patch_length,
            "input_patch_stride": conf.patch_stride,
            "quantiles": PUBLIC["quantiles"],
            "use_reg_token": PUBLIC["use_reg_token"],
        },
    )


class ChronosBoltBackbone(Backbone):
    """`forward(x [B, C, T]) -> (hidden [B, C, P (+1 [REG]), D], loc [B, C], scale [B, C])`, each channel embedded
    on its own by the library's `encode` (what `ChronosBoltPipeline.embed` returns)."""

    def forward(
        self, x: torch.Tensor, observed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if observed is not None:  # check_schedule refuses the self-supervised stages that would pass a mask
            raise ValueError("a Chronos-Bolt backbone takes no observed mask: it is probe-only")
        if x.ndim != 3 or x.shape[-1] != self.conf.context_length or x.shape[1] != self.num_channels:
            raise ValueError(
                f"input shape {tuple(x.shape)} does not fit the backbone "
                f"[batch, {self.num_channels}, {self.conf.context_length}]"
            )
        b, c, t = x.shape
        # float32 as the pipeline's embed() feeds it; encode() scales in float32 itself
        hidden, (loc, scale), *_ = self.model.encode(context=x.reshape(b * c, t).float())
        return hidden.reshape(b, c, *hidden.shape[1:]), loc.reshape(b, c), scale.reshape(b, c)


def build_backbone(conf: BackboneConf, num_channels: int, hf_config: object | None = None) -> ChronosBoltBackbone:
    """A Chronos-Bolt of `hf_config` (a snapshot's, checked by `load_pretrained`), or random of the preset's shape."""
    from chronos.chronos_bolt import ChronosBoltModelForForecasting

    config = hf_config if hf_config is not None else random_config(conf)
    check_context(conf, config.chronos_config["context_length"], f"backbone={conf.name}")
    return ChronosBoltBackbone(conf, num_channels, ChronosBoltModelForForecasting(config))


def _field(raw: dict, key: str):
    value = raw
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def checkpoint_config(conf: BackboneConf, raw: dict, source: str):
    """The T5 config of a snapshot's config.json: a Chronos-Bolt one, of the shape the preset declares."""
    from transformers import T5Config

    architecture = (raw.get("architectures") or [None])[0]
    if "chronos_config" not in raw or architecture != ARCHITECTURE:
        raise CheckpointError(
            f"backbone.pretrained_path={source} is not a Chronos-Bolt checkpoint (architecture {architecture!r}, "
            f"model_type {raw.get('model_type')!r}; {ARCHITECTURE} with a chronos_config expected: the original "
            "Chronos T5 models forecast tokens and have no patch encoder). Fix: amazon/chronos-bolt-tiny, -mini or "
            "-small (backbone=chronos_bolt_tiny, chronos_bolt_mini, chronos_bolt_small)."
        )
    from ttm_experiments.models.pretrained import refuse_other_shape

    # every key compared: one the file does not state is None here, and refused like a different value
    refuse_other_shape(
        conf,
        {ours: _field(raw, theirs) for ours, theirs in EXPECTED.items()},
        source,
        fix="the preset of that size (chronos_bolt_tiny, chronos_bolt_mini, chronos_bolt_small)",
    )
    fields = dict(raw)
    if conf.dropout is not None:
        fields["dropout_rate"] = conf.dropout
    return T5Config.from_dict(fields)


def _load_exactly(backbone: ChronosBoltBackbone, path, source: str) -> int:
    """Every tensor of the snapshot into the model, strictly; returns how many of the file's were left out."""
    from ttm_experiments.models.checkpoint import _load_strict, _read_hf_directory

    _, state = _read_hf_directory(path)
    ignored = [k for k in state if k in IGNORED]
    state = {k: v for k, v in state.items() if k not in IGNORED}
    for target, origin in TIED.items():  # tied to shared.weight: save_pretrained writes the source only
        if target not in state and origin in state:
            state[target] = state[origin]
    _load_strict(backbone, state, f"backbone.pretrained_path={source}")
    log.info(
        "loaded %d Chronos-Bolt tensors of %s strictly (%d ignored: %s)", len(state), source, len(ignored), ignored
    )
    return len(ignored)


def load_pretrained(
    conf: BackboneConf, src: PretrainedSource, *, num_channels: int, num_classes: int
) -> tuple[Classifier, object]:
    """The classifier over the snapshot's Chronos-Bolt (its head unused by the probe) and its `Init`."""
    from ttm_experiments.models.backbones import build_classifier
    from ttm_experiments.models.pretrained import Init

    raw = src.hf_config()
    if raw is None:
        raise CheckpointError(
            f"backbone.pretrained_path={src.source} is a ttm-train checkpoint; a Chronos-Bolt backbone is probe-only "
            "and never written to one. Fix: a hub id (amazon/chronos-bolt-tiny), a local Hugging Face directory of "
            "it, or backbone.pretrained_path=null."
        )
    hf = checkpoint_config(conf, raw, src.source)
    model = build_classifier(conf, num_channels=num_channels, num_classes=num_classes, hf_config=hf)
    ignored = _load_exactly(model.backbone, src.path, src.source)
    return model, Init("pretrained", src.source, src.commit, ignored)
