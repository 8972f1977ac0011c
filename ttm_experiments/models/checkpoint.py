"""Checkpoints that carry their architecture, and strict loading of backbone weights.

Never `strict=False`: a checkpoint from another architecture is an error that shows both architectures,
and missing or unexpected weights are listed. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ttm_experiments.errors import CheckpointError
from ttm_experiments.models.backbones import Backbone, Classifier
from ttm_experiments.models.hub import read_hf_config
from ttm_experiments.utils import faults
from ttm_experiments.utils.files import atomic_file

log = logging.getLogger(__name__)

FORMAT = "ttm-experiments/1"
# Hugging Face config keys -> our architecture keys
_HF_KEYS = {
    "context_length": "context_length",
    "patch_length": "patch_length",
    "patch_stride": "patch_stride",
    "d_model": "d_model",
    "num_layers": "num_layers",
    "num_hidden_layers": "num_layers",
    "adaptive_patching_levels": "adaptive_patching_levels",
    "expansion_factor": "expansion_factor",
    "num_attention_heads": "num_attention_heads",
    "ffn_dim": "ffn_dim",
}


def atomic_save(obj: object, path: Path) -> None:
    """torch.save, atomically: a crash or a full disk never leaves half a file (a full disk or quota is
    `utils.files`' StoreError; another write error, a permission say, is a CheckpointError here)."""
    try:
        with atomic_file(path) as tmp:
            torch.save(obj, tmp)
            faults.point("checkpoint.write")  # chaos test: the temporary file written, not renamed
    except OSError as err:  # e.g. no permission: the previous file at `path` is still intact
        raise CheckpointError(
            f"cannot write {path}: {err}. Fix: free disk space, or paths.runs_dir=<a disk with space>; the previous "
            f"{path.name} (if any) is unchanged."
        ) from None


def read_checkpoint(
    path: Path, source: str, *, keys: tuple[str, ...] = ("architecture", "backbone"), hint: str = ""
) -> dict:
    """A checkpoint written by ttm-train (`format` marker and `keys` present), loaded with `weights_only`;
    anything else is a CheckpointError naming `source` (the config key) and the file, plus `hint`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and why
        raise CheckpointError(f"{source}={path} cannot be read as a checkpoint: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or not all(k in ckpt for k in keys):
        raise CheckpointError(
            f"{source}={path} is not a ttm-experiments checkpoint (format {FORMAT!r} with {', '.join(keys)}){hint}"
        )
    return ckpt


def save_classifier(
    path: Path,
    model: Classifier,
    stage: str,
    class_names: tuple[str, ...],
    *,
    window_s: float | None = None,
    amplitude: dict | None = None,
) -> None:
    """A checkpoint of the whole classifier with its architecture, the stage that wrote it, the seconds one
    window spans (`dataset.duration_s`: with the context length, the rate the model was trained at) and the
    range of window location and scale it was trained on (`models/amplitude.AmplitudeRange.as_dict`)."""
    atomic_save(
        {
            "format": FORMAT,
            "architecture": model.backbone.architecture(),
            "stage": stage,
            "class_names": list(class_names),
            "window_s": window_s,
            "amplitude": amplitude,
            "backbone": model.backbone.model.state_dict(),
            "head": model.head.state_dict(),
            "head_spec": getattr(model.head, "spec", None),  # backbone.head=tspulse: its config (tspulse_head.py)
        },
        path,
    )


def _compare(kind: str, expected: dict, found: dict, source: str) -> None:
    """Raise when `found` disagrees with `expected` on any key both define (channels may differ for TTM)."""
    skip = {"num_channels"} if kind == "ttm" else set()
    diffs = {k: (expected[k], found[k]) for k in expected if k in found and k not in skip and expected[k] != found[k]}
    if diffs:
        rows = "\n".join(f"  {k}: model {a!r}  checkpoint {b!r}" for k, (a, b) in diffs.items())
        raise CheckpointError(
            f"{source} holds another architecture than the configured backbone:\n{rows}\n"
            f"model:      {json.dumps(expected, sort_keys=True)}\ncheckpoint: {json.dumps(found, sort_keys=True)}\n"
            "Fix: choose the backbone config the checkpoint was trained with, or another checkpoint."
        )


def _load_strict(backbone: Backbone, state: dict, source: str) -> None:
    try:
        backbone.model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing, unexpected or mis-shaped tensors: say which, not a traceback
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:6])
        raise CheckpointError(f"{source} does not fit the backbone: {details}") from None


def _read_hf_directory(path: Path) -> tuple[dict, dict]:
    config = read_hf_config(path, str(path))
    weights = path / "model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        state = load_file(str(weights))
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"backbone.pretrained_path={path} has no model.safetensors or pytorch_model.bin")
    return config, state


def split_encoder(state: dict, backbone: Backbone) -> tuple[dict, dict[str, int]]:
    """The encoder's tensors, and the count of those dropped per top-level module.

    A forecasting or classification checkpoint (`...ForPrediction`, `...ForClassification`) holds the encoder
    under `backbone.` plus a decoder and a head that a classifier does not use: they are dropped explicitly and
    counted. A state saved from the encoder itself is used whole. Either way the strict load that follows
    refuses anything missing or unexpected."""
    if set(state) & set(backbone.model.state_dict()) or not any(k.startswith("backbone.") for k in state):
        return state, {}
    encoder, dropped = {}, {}
    for key, value in state.items():
        if key.startswith("backbone."):
            encoder[key[len("backbone.") :]] = value
        else:
            top = key.split(".", 1)[0]
            dropped[top] = dropped.get(top, 0) + 1
    return encoder, dropped


def load_hf_weights(backbone: Backbone, path: Path, source: str) -> int:
    """Strictly load the encoder tensors of the Hugging Face directory `path`; returns how many tensors of the
    checkpoint (its decoder and head) were dropped, which is logged once here."""
    _, state = _read_hf_directory(path)
    encoder, dropped = split_encoder(state, backbone)
    _load_strict(backbone, encoder, f"backbone.pretrained_path={source}")
    parts = ", ".join(f"{name} {n}" for name, n in sorted(dropped.items())) or "none"
    log.info(
        "loaded %d encoder tensors of %s strictly; dropped %d decoder/head tensors (%s)",
        len(encoder),
        source,
        sum(dropped.values()),
        parts,
    )
    return sum(dropped.values())


def load_backbone_weights(backbone: Backbone, pretrained_path: str) -> str:
    """Load weights into `backbone` strictly. Returns the initialisation kind: `ssl` or `pretrained`.

    Accepts a checkpoint file written by this suite, or a Hugging Face model directory (config.json +
    model.safetensors), such as a local copy of the public TTM weights.
    """
    path = Path(pretrained_path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"backbone.pretrained_path={pretrained_path} does not exist. Fix: give a checkpoint file written by "
            "ttm-train (runs/.../best.pt) or a local model directory, or backbone.pretrained_path=null."
        )
    expected = backbone.architecture()
    kind = expected["kind"]
    if path.is_dir():
        config = read_hf_config(path, str(path))
        found = {ours: config[theirs] for theirs, ours in _HF_KEYS.items() if theirs in config}
        _compare(kind, expected, found, f"backbone.pretrained_path={path}")
        load_hf_weights(backbone, path, str(path))
        return "pretrained"
    ckpt = read_checkpoint(path, "backbone.pretrained_path")
    _compare(kind, expected, ckpt["architecture"], f"backbone.pretrained_path={path}")
    if ckpt["architecture"].get("kind") != kind:
        raise CheckpointError(
            f"backbone.pretrained_path={path} is a {ckpt['architecture'].get('kind')} checkpoint; "
            f"the configured backbone is {kind}"
        )
    _load_strict(backbone, ckpt["backbone"], f"backbone.pretrained_path={path}")
    log.info("loaded backbone weights from %s (written by stage %r)", path, ckpt.get("stage"))
    return "ssl"
