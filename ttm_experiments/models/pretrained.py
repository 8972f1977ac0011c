"""The classifier a run starts from: random, or built from a checkpoint's own config.json and loaded strictly.

With a hub id or a Hugging Face directory, every field of the checkpoint's config.json builds the encoder; the
backbone yaml only declares what the experiment expects (context, patching, width, depth), and a checkpoint that
disagrees is an error showing both values. Fields the suite cannot serve are refused, not ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttm_experiments.config.schema import BackboneConf, HeadKind
from ttm_experiments.errors import CheckpointError
from ttm_experiments.models.backbones import Classifier, build_classifier
from ttm_experiments.models.checkpoint import load_backbone_weights, load_hf_weights
from ttm_experiments.models.hub import PretrainedSource, resolve_pretrained

# backbone.kind -> the config.json `model_type` it can load
MODEL_TYPES = {"ttm": "tinytimemixer", "tspulse": "tspulse", "patchtst": "patchtst"}
# what the yaml declares and the checkpoint must agree on: our key -> the config.json key
EXPECTED = {
    "ttm": {
        k: k
        for k in (
            "context_length",
            "patch_length",
            "patch_stride",
            "d_model",
            "num_layers",
            "adaptive_patching_levels",
            "expansion_factor",
        )
    },
    "tspulse": {
        k: k for k in ("context_length", "patch_length", "patch_stride", "d_model", "num_layers", "expansion_factor")
    },
    "patchtst": {
        "context_length": "context_length",
        "patch_length": "patch_length",
        "patch_stride": "patch_stride",
        "d_model": "d_model",
        "num_layers": "num_hidden_layers",
        "num_attention_heads": "num_attention_heads",
        "ffn_dim": "ffn_dim",
    },
}
# config.json fields whose values need inputs the suite does not have: field -> (refused value, why)
UNSERVED = {
    "resolution_prefix_tuning": (
        True,
        "the encoder then expects a frequency token (the sampling resolution) with "
        "every window, which the suite's data does not supply",
    ),
}


@dataclass(frozen=True)
class Init:
    """Where a run's backbone weights came from, as it is recorded on the run."""

    kind: str  # random | ssl | pretrained
    source: str | None = None  # <hub id>@<revision> or the path
    commit: str | None = None  # the hub snapshot's commit hash
    dropped_tensors: int = 0  # decoder/head tensors of the checkpoint that the classifier does not use

    def tags(self) -> dict[str, str]:
        return {
            "init": self.kind,
            "backbone.source": self.source or "random",
            "backbone.commit": self.commit or "none",
            "backbone.dropped_tensors": str(self.dropped_tensors),
        }


def _check_fields(conf: BackboneConf, raw: dict, source: str) -> None:
    """Model type, the yaml's declared expectations, and fields the suite cannot serve."""
    kind = conf.kind.value
    found_type = raw.get("model_type")
    if found_type != MODEL_TYPES.get(kind):
        raise CheckpointError(
            f"backbone.pretrained_path={source} is a {found_type!r} checkpoint, but backbone={conf.name} is "
            f"{kind} (model_type {MODEL_TYPES.get(kind)!r}). Fix: a backbone preset of that model "
            f"(tspulse_r1 for TSPulse, ttm_r2_* / ttm_r1_1024 for TTM), or another checkpoint."
        )
    refuse_other_shape(
        conf,
        {ours: raw[theirs] for ours, theirs in EXPECTED[kind].items() if theirs in raw},
        source,
        fix="the preset made for that checkpoint (e.g. backbone=ttm_r2_512 for 512-context weights), another "
        "backbone.revision",
    )
    decomposed = [a for a in raw.get("architectures") or [] if "Decomposed" in a]
    if decomposed:
        raise CheckpointError(
            f"backbone.pretrained_path={source} is a {decomposed[0]} checkpoint (a TTM r3 '-dec-' revision): "
            "its weights are a trend and a residual TinyTimeMixer, two encoders the suite's single-encoder "
            "classifier cannot hold. Fix: a revision without '-dec-' (backbone=ttm_r3_1024 or ttm_r3_1024_lite)."
        )
    for field, (refused, why) in UNSERVED.items():
        if raw.get(field) == refused:
            raise CheckpointError(
                f"backbone.pretrained_path={source} has {field}={refused!r}: {why}. Fix: a revision without it."
            )


def refuse_other_shape(conf: BackboneConf, found: dict, source: str, *, fix: str) -> None:
    """A CheckpointError listing every backbone key whose checkpoint value (`found`: key -> value) differs from
    `conf`'s, with `fix` (the presets that suit); nothing when all agree."""
    diffs = {key: (getattr(conf, key), value) for key, value in found.items() if getattr(conf, key) != value}
    if diffs:
        rows = "; ".join(f"backbone.{k}: config {a!r}, checkpoint {b!r}" for k, (a, b) in diffs.items())
        raise CheckpointError(
            f"backbone.pretrained_path={source} holds another architecture than backbone={conf.name} declares: "
            f"{rows}. Fix: {fix}, or override those keys to the checkpoint's values."
        )


def checkpoint_config(conf: BackboneConf, raw: dict, *, num_channels: int, source: str):
    """The Hugging Face config object of a checkpoint's config.json, checked against `conf`, for our channels
    and with `backbone.dropout` when it is set (null keeps the checkpoint's)."""
    _check_fields(conf, raw, source)
    channels = raw.get("num_input_channels", num_channels)
    if raw.get("mode") == "mix_channel" and channels != num_channels:
        raise CheckpointError(
            f"backbone.pretrained_path={source} mixes {channels} channels (mode mix_channel); the data has "
            f"{num_channels}. Fix: dataset.channels={channels}, or a common_channel checkpoint."
        )
    fields = {**raw, "num_input_channels": num_channels}
    if conf.dropout is not None:
        keys = (
            ("attention_dropout", "positional_dropout", "ff_dropout") if conf.kind.value == "patchtst" else ("dropout",)
        )
        fields.update(dict.fromkeys(keys, conf.dropout))
    if conf.kind.value == "ttm":
        from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig as config_class
    elif conf.kind.value == "tspulse":
        from tsfm_public.models.tspulse import TSPulseConfig as config_class
    else:
        from transformers import PatchTSTConfig as config_class
    return config_class.from_dict(fields)


def locate_weights(conf: BackboneConf) -> PretrainedSource | None:
    """The snapshot or file of `conf.pretrained_path` (downloaded or found in the cache), None for random weights.
    Recipes call it before reading the data, so that missing weights stop a run before any long work."""
    return resolve_pretrained(conf.pretrained_path, conf.revision) if conf.pretrained_path else None


def build_model(
    conf: BackboneConf, *, num_channels: int, num_classes: int, src: PretrainedSource | None = None
) -> tuple[Classifier, Init]:
    """The classifier of `conf`, random or from `conf.pretrained_path` (at `conf.revision`; `src` when the caller
    resolved it already), and its `Init`."""
    if not conf.pretrained_path:
        return build_classifier(conf, num_channels=num_channels, num_classes=num_classes), Init("random")
    if src is None:
        src = resolve_pretrained(conf.pretrained_path, conf.revision)
    if conf.kind.value == "chronos_bolt":  # its config.json nests the patching; T5's tied tensors (models/chronos.py)
        from ttm_experiments.models.chronos import load_pretrained

        return load_pretrained(conf, src, num_channels=num_channels, num_classes=num_classes)
    raw = src.hf_config()
    if raw is None:  # a ttm-train checkpoint: the yaml builds, the file's architecture must match it
        model = build_classifier(conf, num_channels=num_channels, num_classes=num_classes)
        return model, Init(load_backbone_weights(model.backbone, str(src.path)), src.source)
    if conf.kind.value == "mantis":  # mantis-tsfm's network from its config.json, projector dropped (models/mantis.py)
        from ttm_experiments.models import mantis

        spec = mantis.checkpoint_spec(conf, raw, source=src.source)
        model = build_classifier(conf, num_channels=num_channels, num_classes=num_classes, hf_config=spec)
        dropped = mantis.load_snapshot(model.backbone, src.path, src.source)
        return model, Init("pretrained", src.source, src.commit, dropped)
    hf = checkpoint_config(conf, raw, num_channels=num_channels, source=src.source)
    model = build_classifier(
        conf, num_channels=num_channels, num_classes=num_classes, hf_config=hf, head_dropout=raw.get("head_dropout")
    )
    dropped = load_hf_weights(model.backbone, src.path, src.source)
    if conf.head == HeadKind.tspulse:  # TSPulse's decoder + head start from the snapshot's where they fit
        from ttm_experiments.models.tspulse_head import load_snapshot_head

        dropped -= load_snapshot_head(model.head, src.path, src.source)
    return model, Init("pretrained", src.source, src.commit, dropped)
