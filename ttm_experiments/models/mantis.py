"""Mantis (mantis-tsfm's MantisV1 / MantisV2) as a suite backbone: one embedding per channel.

Mantis is a univariate classification foundation model: a window of `T` samples (a multiple of its token count,
`num_patches`, 32 in every public checkpoint) becomes `num_patches` tokens (convolutions over the window and its
first difference, each standardised, plus encodings of each token's mean and std), a transformer reads them with a
learned classification token, and that token's final state is the window's embedding (what
`MantisTrainer.transform` returns and what its fine-tuning heads read by default). So here each channel is embedded
alone and `hidden` is that embedding as a single "patch": `[B, C, 1, D]`. The suite's head pools mean and max over
patches; over one patch both equal the embedding, so the head (and the linear probe) see the classification token
twice, the same information as Mantis's own head. `loc`/`scale` are the window's mean and std, what Mantis's
standardisation removes before the convolutions (the token statistics still carry the amplitude into the model).

The network is the library's own class, built from the snapshot's config.json as `PyTorchModelHubMixin` would
(absent fields take the class's defaults), and loaded strictly; the contrastive pre-training projector (`prj.*`),
which the forward pass does not use, is dropped and counted. The backbone's module is the network itself, so the
unfreeze rules match its names (`transf_unit.transformer.layers.N`: one block per transformer layer).

Context: `num_patches` is `backbone.context_length / backbone.patch_length`. MantisV2 takes any multiple of its
token count (its convolution kernel does not depend on the length); MantisV1's kernel is `seq_len / num_patches`
(+1) wide, so its checkpoint fixes the window length. The data resamples every window to `context_length`
samples (`dataset.window_length` follows it), which is Mantis's own advice (interpolate to 512); nothing is padded
or cropped. Self-supervised stages mask patches of `hidden`, which Mantis does not have: refused.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch

from ttm_experiments.config.schema import BackboneConf, BackboneKind, MantisVersion, StageKind, TrainConfig
from ttm_experiments.errors import CheckpointError, ConfigError
from ttm_experiments.models.backbones import Backbone, mantis_version_unused

log = logging.getLogger(__name__)

PROJECTOR = "prj."  # the pre-training projector (InfoNCE), unused by the encoder's forward: dropped
# constructor arguments that choose what forward returns, not the weights: fixed here (the last layer's
# classification token), as the library's own from_pretrained takes them from the instance, not the config.json
RUNTIME = {"device": "cpu", "pre_training": False, "return_transf_layer": -1, "output_token": "cls_token"}
# backbone key -> the constructor argument it declares (both versions); num_patches and seq_len follow the context
DECLARED = {
    "d_model": "hidden_dim",
    "num_layers": "transf_depth",
    "num_attention_heads": "transf_num_heads",
    "ffn_dim": "transf_mlp_dim",
}
PRESETS = {MantisVersion.v1: "mantis_8m", MantisVersion.v2: "mantis_v2"}


def network_class(version: MantisVersion):
    from mantis.architecture import MantisV1, MantisV2

    return MantisV1 if version == MantisVersion.v1 else MantisV2


def _arguments(version: MantisVersion) -> dict:
    """The class's constructor arguments and their defaults, less the runtime ones."""
    params = inspect.signature(network_class(version).__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and k not in RUNTIME}


def check_conf(conf: BackboneConf) -> int:
    """The token count `context_length / patch_length`, or a ConfigError naming the fix."""
    if conf.mantis_version is None:
        raise ConfigError(
            f"backbone={conf.name} is kind=mantis without backbone.mantis_version. Fix: backbone=mantis_v2 or "
            "backbone=mantis_8m, or backbone.mantis_version=v2 (MantisV2) / v1 (MantisV1, Mantis-8M)."
        )
    if conf.patch_stride != conf.patch_length or conf.context_length % conf.patch_length:
        raise ConfigError(
            f"Mantis cuts a window into backbone.context_length / backbone.patch_length tokens without overlap, but "
            f"context_length={conf.context_length}, patch_length={conf.patch_length}, patch_stride="
            f"{conf.patch_stride}. Fix: a context that is a multiple of 32 (the public checkpoints' 32 tokens) with "
            "patch_length = patch_stride = context_length / 32, e.g. backbone.context_length=512 "
            "backbone.patch_length=16 backbone.patch_stride=16 (what mantis_v2 sets; windows are resampled to it)."
        )
    return conf.context_length // conf.patch_length


def check(c: TrainConfig) -> None:
    """At config validation (no data, no weights): a Mantis backbone's context, and no self-supervised stage;
    `backbone.mantis_version` on any other backbone (a baseline builds no network that would refuse it later)."""
    if c.backbone.kind != BackboneKind.mantis:
        if c.backbone.mantis_version is not None:
            raise ConfigError(mantis_version_unused(c.backbone))
        return
    check_conf(c.backbone)
    masked = [s.name for s in c.schedule.stages if s.kind != StageKind.supervised]
    if masked:
        raise ConfigError(
            f"backbone={c.backbone.name} (Mantis) has one embedding per channel, no patches to mask, so the "
            f"self-supervised stages {masked} of schedule={c.schedule.name} cannot run on it. Fix: a supervised "
            "schedule (head_only, progressive, full) or schedule=linear_probe."
        )


def random_spec(conf: BackboneConf) -> dict:
    """The constructor arguments of a randomly initialised network of `conf`'s shape (others: the defaults,
    which are the public checkpoints' values in mantis-tsfm 1.1.0)."""
    spec = _arguments(conf.mantis_version)
    spec.update({theirs: getattr(conf, ours) for ours, theirs in DECLARED.items()}, num_patches=check_conf(conf))
    if conf.mantis_version == MantisVersion.v1:
        spec["seq_len"] = conf.context_length
    if conf.dropout is not None:
        spec["transf_dropout"] = conf.dropout
    return {"version": conf.mantis_version.value, **spec}


def checkpoint_spec(conf: BackboneConf, raw: dict, *, source: str) -> dict:
    """The constructor arguments of a snapshot's config.json (absent fields: the class's defaults, as the
    library's `from_pretrained`), checked against what `conf` declares; `backbone.dropout` replaces
    `transf_dropout` when set."""
    tokens = check_conf(conf)
    version = conf.mantis_version
    other = MantisVersion.v1 if version == MantisVersion.v2 else MantisVersion.v2
    marker = {MantisVersion.v1: "seq_len", MantisVersion.v2: "kernel_size"}
    if marker[other] in raw:
        raise CheckpointError(
            f"backbone.pretrained_path={source} is a Mantis{other.value.upper()} checkpoint (its config.json has "
            f"{marker[other]}), but backbone={conf.name} is mantis_version={version.value}. Fix: "
            f"backbone={PRESETS[other]}, or backbone.mantis_version={other.value}."
        )
    arguments = _arguments(version)
    ignored = sorted(set(raw) - set(arguments) - set(RUNTIME))
    if ignored:  # what PyTorchModelHubMixin does with fields its class does not take
        name = network_class(version).__name__
        log.info("%s: config.json fields %s are no %s arguments, not used", source, ignored, name)
    spec = {**arguments, **{k: v for k, v in raw.items() if k in arguments}}
    expected = {theirs: getattr(conf, ours) for ours, theirs in DECLARED.items()}
    expected["num_patches"] = tokens
    if version == MantisVersion.v1:
        expected["seq_len"] = conf.context_length
    diffs = {k: (v, spec[k]) for k, v in expected.items() if spec[k] != v}
    if diffs:
        ours = {v: f"backbone.{k}" for k, v in DECLARED.items()}
        ours.update(num_patches="context_length/patch_length", seq_len="backbone.context_length")
        rows = "; ".join(f"{k} ({ours[k]}): config {a!r}, checkpoint {b!r}" for k, (a, b) in diffs.items())
        fix = (
            "backbone.context_length=512 with patch_length=patch_stride=16 (the checkpoint's 32 tokens"
            + ("; MantisV1's convolution width fixes its window length)" if version == MantisVersion.v1 else ")")
            if {"num_patches", "seq_len"} & set(diffs)
            else f"the preset made for it (backbone={PRESETS[version]}) or override those keys to the checkpoint's"
        )
        raise CheckpointError(
            f"backbone.pretrained_path={source} holds another Mantis than backbone={conf.name} declares: {rows}. "
            f"Fix: {fix}."
        )
    if conf.dropout is not None:
        spec["transf_dropout"] = conf.dropout
    return {"version": version.value, **spec}


class MantisBackbone(Backbone):
    """`forward(x [B, C, T]) -> (hidden [B, C, 1, D], loc [B, C], scale [B, C])`; `model` is the Mantis network
    (its `prj` projector removed), `spec` its constructor arguments with the version."""

    reads_amplitude = True  # its tokens encode each patch's raw mean and std: the answer depends on the units

    def __init__(self, conf: BackboneConf, num_channels: int, spec: dict):
        arguments = {k: v for k, v in spec.items() if k != "version"}
        network = network_class(MantisVersion(spec["version"]))(**arguments, **RUNTIME)
        del network.prj  # the pre-training projector: forward never reaches it (pre_training=False)
        super().__init__(conf, num_channels, network)
        self.spec = spec

    def architecture(self) -> dict:
        """The suite's record plus the network's shape (its arguments less dropout), which rebuilds it."""
        shape = {k: v for k, v in self.spec.items() if k != "transf_dropout"}
        return {**super().architecture(), "mantis": shape}

    def forward(
        self, x: torch.Tensor, observed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if observed is not None:
            raise ConfigError(
                f"backbone={self.conf.name} (Mantis) has one embedding per channel, no patches to mask, so the "
                "self-supervised stages cannot run on it. Fix: a supervised schedule (head_only, progressive, full) "
                "or schedule=linear_probe."
            )
        if x.shape[-1] != self.conf.context_length or x.shape[1] != self.num_channels:
            raise ValueError(
                f"input shape {tuple(x.shape)} does not fit the backbone "
                f"[batch, {self.num_channels}, {self.conf.context_length}]"
            )
        b, c, t = x.shape
        embedding = self.model(x.reshape(b * c, 1, t))  # channels one by one, as Mantis's own trainer does
        # what Mantis's standardisation divides by (torch.std, unbiased, plus its 1e-5)
        return embedding.view(b, c, 1, -1), x.mean(dim=-1), x.std(dim=-1) + 1e-5


def build(conf: BackboneConf, *, num_channels: int, spec: dict | None = None) -> MantisBackbone:
    """A Mantis backbone of `spec` (a checkpoint's, from `checkpoint_spec`) or, without, of `conf`'s shape."""
    return MantisBackbone(conf, num_channels, random_spec(conf) if spec is None else spec)


def load_snapshot(backbone: MantisBackbone, path: Path, source: str) -> int:
    """Strictly load the snapshot's network tensors (MantisV1 renames a legacy `vit_unit.*` checkpoint itself);
    returns how many projector tensors were dropped."""
    from ttm_experiments.models.checkpoint import _load_strict, _read_hf_directory

    _, state = _read_hf_directory(path)
    encoder = {k: v for k, v in state.items() if not k.startswith(PROJECTOR)}
    _load_strict(backbone, encoder, f"backbone.pretrained_path={source}")
    dropped = len(state) - len(encoder)
    log.info("loaded %d Mantis tensors of %s strictly; dropped %d projector tensors", len(encoder), source, dropped)
    return dropped


def rebuild(conf: BackboneConf, architecture: dict) -> tuple[BackboneConf, dict]:
    """The BackboneConf and network arguments of a Mantis classifier checkpoint, for evaluation (no dropout)."""
    import dataclasses

    shape = architecture.get("mantis")
    if conf.kind != BackboneKind.mantis or not isinstance(shape, dict) or "version" not in shape:
        raise CheckpointError("the checkpoint's architecture has no Mantis network arguments: it cannot be rebuilt")
    conf = dataclasses.replace(conf, mantis_version=MantisVersion(shape["version"]))
    return conf, {**shape, "transf_dropout": 0.0}
