"""A trained classifier outside training: load a `best.pt` strictly, check windows, score them.

What training does to a window before the model is only this: a float32 [N, channels, context] array, checked
by `data/prepare.check_windows` (length, channels, NaN/Inf, constant); the per-window scaler is inside TTM.
`score` applies the same checks and the same evaluation-mode forward pass, so its probabilities are the
training code's own (`Trainer.predict` + softmax).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ttm_experiments.errors import CheckpointError, DataError
from ttm_experiments.models.amplitude import AmplitudeRange
from ttm_experiments.models.backbones import ARCHITECTURE_KEYS, Classifier

CKPT_KEYS = ("format", "architecture", "class_names", "backbone", "head")


@dataclass
class TrainedModel:
    """A classifier rebuilt from its checkpoint, with what it was trained on."""

    model: Classifier
    class_names: tuple[str, ...]
    context_length: int
    num_channels: int
    window_s: float | None  # seconds per window at training (None: a checkpoint older than this field)
    source: str
    amplitude: AmplitudeRange | None = None  # the training windows' location and scale (None: an older checkpoint)

    @property
    def uses_amplitude(self) -> bool:
        """Whether the model reads each window's amplitude: a head that sees its location and log-scale
        (`backbone.scale_features`, TSPulse's own head) or a backbone that encodes it (Mantis's token statistics).
        Then its probabilities depend on the recording's units; without, they are the same for `a * x + b` (a > 0)."""
        return self.amplitude_reader is not None

    @property
    def amplitude_reader(self) -> tuple[str, str] | None:
        """(which part of the model reads amplitude, the training setting without it), for messages; None if no
        part does."""
        if self.model.backbone.reads_amplitude:
            return (
                f"the {self.model.backbone.conf.kind.value} backbone encodes each patch's raw mean and std",
                "a backbone of the TTM family with backbone.scale_features=false",
            )
        if self.model.head.scale_features:
            if getattr(self.model.head, "spec", None):  # backbone.head=tspulse (models/tspulse_head.py)
                return ("TSPulse's own head reads each window's location and scale", "backbone.head=suite")
            return (
                "the head reads each window's location and scale (backbone.scale_features=true)",
                "backbone.scale_features=false",
            )
        return None

    def outside_training_amplitude(self, windows: np.ndarray) -> np.ndarray | None:
        """[N] bool: windows whose location or scale lies outside the training windows' (None: not recorded)."""
        return None if self.amplitude is None else self.amplitude.outside(windows)

    @property
    def fs(self) -> float | None:
        """The rate the model was trained at: context samples over the window's seconds."""
        return None if self.window_s is None else self.context_length / self.window_s


def _read(path: Path, source: str) -> dict:
    from ttm_experiments.models.checkpoint import read_checkpoint

    if not path.is_file():
        raise CheckpointError(
            f"{source}: {path} does not exist. Fix: give a best.pt written by ttm-train "
            "(runs/outputs/.../best.pt), an MLflow run id or models:/<name>/<version>."
        )
    hint = "; a foundation.pt of a pretrain schedule has no trained head: fine-tune it first."
    return read_checkpoint(path, source, keys=CKPT_KEYS, hint=hint)


def _backbone_conf(ckpt: dict):
    """The BackboneConf the checkpoint's architecture and head weights describe (no dropout: evaluation)."""
    from ttm_experiments.config.schema import BackboneConf, BackboneKind

    arch, head = ckpt["architecture"], ckpt["head"]
    if arch.get("kind") not in {k.value for k in BackboneKind} or "mlp.1.weight" not in head:
        raise CheckpointError(
            f"the checkpoint holds a {arch.get('kind')!r} model without the classifier head "
            "ttm-train writes; only classifiers trained by ttm-train can be scored"
        )
    kind = BackboneKind(arch["kind"])
    shape = {k: arch[k] for k in ARCHITECTURE_KEYS if k in arch}
    if kind != BackboneKind.ttm:
        shape.pop("adaptive_patching_levels", None)
    return BackboneConf(
        name=f"checkpoint_{kind.value}",
        kind=kind,
        block_pattern="",
        dropout=0.0,
        head_dropout=0.0,
        head_hidden=int(head["mlp.1.weight"].shape[0]),
        scale_features=any(k.startswith("scale_norm.") for k in head),
        **shape,
    )


def load_classifier(path: Path | str, *, source: str = "predict.model") -> TrainedModel:
    """A classifier checkpoint (`best.pt`) as a model in evaluation mode; loading is strict."""
    from ttm_experiments.models.backbones import build_classifier

    path = Path(path).expanduser()
    ckpt = _read(path, source)
    names = tuple(ckpt["class_names"])
    hf_config = None
    if ckpt.get("head_spec"):  # backbone.head=tspulse: TSPulse's decoder + head, rebuilt from the config it recorded
        from ttm_experiments.models.tspulse_head import rebuild

        conf, hf_config = rebuild(ckpt["head_spec"], ckpt["architecture"])
    else:
        conf = _backbone_conf(ckpt)
    if conf.kind.value == "mantis":  # the network's own arguments, recorded with its architecture (models/mantis.py)
        from ttm_experiments.models.mantis import rebuild as rebuild_mantis

        conf, hf_config = rebuild_mantis(conf, ckpt["architecture"])
    channels = int(ckpt["architecture"]["num_channels"])
    fork = torch.random.fork_rng(devices=[])  # building draws random weights: leave the caller's generator alone
    with fork:
        model = build_classifier(conf, num_channels=channels, num_classes=len(names), hf_config=hf_config)
    try:
        model.backbone.model.load_state_dict(ckpt["backbone"], strict=True)
        model.head.load_state_dict(ckpt["head"], strict=True)
    except RuntimeError as err:  # missing, unexpected or mis-shaped tensors
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise CheckpointError(f"{source}: {path} does not fit its recorded architecture: {details}") from None
    model.eval()
    window_s = ckpt.get("window_s")
    amplitude = ckpt.get("amplitude")
    return TrainedModel(
        model=model,
        class_names=names,
        context_length=conf.context_length,
        num_channels=channels,
        window_s=None if window_s is None else float(window_s),
        source=str(path),
        amplitude=None if amplitude is None else AmplitudeRange.from_dict(amplitude),
    )


def check_input(windows: np.ndarray, *, num_channels: int, context_length: int) -> np.ndarray:
    """The windows as float32 [N, C, T], refused as training refuses them: other shape, NaN/Inf, constant."""
    x = np.asarray(windows)
    if x.ndim == 2 and num_channels == 1:
        x = x[:, None, :]
    if x.ndim != 3 or x.shape[1:] != (num_channels, context_length):
        raise DataError(
            f"windows of shape {x.shape} do not fit the model: it takes float32 [N, {num_channels}, "
            f"{context_length}] (windows of {context_length} samples, {num_channels} channel(s)). "
            "Fix: cut and resample the signal as ttm-predict does (predict.input=...)."
        )
    x = x.astype(np.float32, copy=False)
    bad_value = ~np.isfinite(x).all(axis=(1, 2))
    flat = np.zeros(len(x), dtype=bool)
    flat[~bad_value] = (x[~bad_value].std(axis=2) < 1e-8).any(axis=1)
    if bad_value.any() or flat.any():
        rows = np.flatnonzero(bad_value | flat)
        raise DataError(
            f"{int(bad_value.sum())} window(s) with NaN/Inf and {int(flat.sum())} constant window(s) "
            f"(rows {rows[:5].tolist()}): they carry no signal and break the scaler, as in training. "
            "Fix: remove or clean them."
        )
    return x


@torch.inference_mode()
def score(trained: TrainedModel, windows: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Per-class probabilities [N, K] of checked windows: evaluation mode, float32, batched."""
    from ttm_experiments.metrics.classification import softmax

    x = torch.from_numpy(check_input(windows, num_channels=trained.num_channels, context_length=trained.context_length))
    trained.model.eval()
    logits = [trained.model(chunk).float() for chunk in x.split(max(1, batch_size))]
    if not logits:
        return np.zeros((0, len(trained.class_names)))
    return softmax(torch.cat(logits).numpy())


def probability_columns(class_names: tuple[str, ...]) -> list[str]:
    return [f"p_{name}" for name in class_names]
