"""DictConfig -> typed, validated specs. The only place below the CLI that knows the config layout.

Hydra's struct mode and the schema reject unknown keys and wrong types at compose time; this module adds
the checks a type cannot express (a positive learning rate, a regex that compiles, a window length that
matches the backbone) and says which key to change.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import torch
from omegaconf import DictConfig, OmegaConf

from ttm_experiments.config.schema import TrainConfig
from ttm_experiments.data.prepare import DatasetSpec
from ttm_experiments.errors import ConfigError
from ttm_experiments.models.backbones import BackboneSpec
from ttm_experiments.training.loop import LoopSettings, StagePlan
from ttm_experiments.training.ssl import SSLSettings
from ttm_experiments.unfreeze import BlockRule


def to_config(cfg: DictConfig) -> TrainConfig:
    """Resolve interpolations and return the typed config object; validate what types cannot."""
    config = OmegaConf.to_object(cfg)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"the composed config is a {type(config).__name__}, not TrainConfig: is train_schema first in the defaults?")
    validate(config)
    return config


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{name}={value} must be a finite number {'>= 0' if allow_zero else '> 0'}")


def validate(c: TrainConfig) -> None:
    _positive("optim.lr", c.optim.lr)
    _positive("optim.weight_decay", c.optim.weight_decay, allow_zero=True)
    _positive("optim.batch_size", c.optim.batch_size)
    _positive("optim.eval_batch_size", c.optim.eval_batch_size)
    _positive("optim.layer_decay", c.optim.layer_decay)
    if not 0 <= c.optim.warmup_frac < 1:
        raise ConfigError(f"optim.warmup_frac={c.optim.warmup_frac} must be in [0, 1)")
    if c.unfreeze.last_n < 0:
        raise ConfigError(f"unfreeze.last_n={c.unfreeze.last_n} must be >= 0 (0 = head only)")
    if c.unfreeze.strategy.value == "pattern":
        if not c.unfreeze.pattern:
            raise ConfigError("unfreeze.pattern is empty: give a regex, e.g. unfreeze.pattern='encoder\\.layers\\.\\d+'")
        try:
            re.compile(c.unfreeze.pattern)
        except re.error as err:
            raise ConfigError(f"unfreeze.pattern={c.unfreeze.pattern!r} is not a valid regex: {err}") from None
    if not c.schedule.stages:
        raise ConfigError(f"schedule={c.schedule.name} has no stages")
    names = [s.name for s in c.schedule.stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"schedule stage names must be unique, got {names}")
    for i, stage in enumerate(c.schedule.stages):
        if stage.epochs < 1:
            raise ConfigError(f"schedule.stages[{i}] ({stage.name}).epochs={stage.epochs} must be >= 1")
        _positive(f"schedule.stages[{i}].head_lr_scale", stage.head_lr_scale)
        if not 0 < stage.mask_ratio < 1:
            raise ConfigError(f"schedule.stages[{i}] ({stage.name}).mask_ratio={stage.mask_ratio} must be in (0, 1)")
        if stage.kind.value == "supervised" and stage.data.value != "target":
            raise ConfigError(f"schedule.stages[{i}] ({stage.name}) is supervised: it trains on data=target only")
        backbone_needed = stage.train.value != "head" or stage.kind.value != "supervised"
        _positive(f"schedule.stages[{i}].backbone_lr_scale", stage.backbone_lr_scale, allow_zero=not backbone_needed)
    if c.dataset.window_length != c.backbone.context_length:
        raise ConfigError(
            f"dataset.window_length={c.dataset.window_length} differs from backbone.context_length="
            f"{c.backbone.context_length}; windows are never padded or cropped. Leave dataset.window_length "
            "unset (it follows the backbone) or choose a backbone with that context length."
        )
    _positive("dataset.duration_s", c.dataset.duration_s)
    if c.dataset.nonfinite not in ("error", "drop"):
        raise ConfigError(f"dataset.nonfinite={c.dataset.nonfinite!r} must be 'error' or 'drop'")
    if c.inspect.format not in ("text", "json"):
        raise ConfigError(f"inspect.format={c.inspect.format!r} must be 'text' or 'json'")
    if c.optimized_metric.partition("/")[0] not in ("train", "val"):
        raise ConfigError(f"optimized_metric={c.optimized_metric!r} must be a per-epoch metric such as 'val/auroc'")
    if not 0 <= c.trainer.collapse_threshold < 1:
        raise ConfigError(f"trainer.collapse_threshold={c.trainer.collapse_threshold} must be in [0, 1)")


def backbone_spec(c: TrainConfig) -> BackboneSpec:
    b = c.backbone
    return BackboneSpec(
        kind=b.kind.value,
        context_length=b.context_length,
        patch_length=b.patch_length,
        patch_stride=b.patch_stride,
        d_model=b.d_model,
        num_layers=b.num_layers,
        num_channels=c.dataset.channels,
        adaptive_patching_levels=b.adaptive_patching_levels if b.kind.value == "ttm" else 0,
        expansion_factor=b.expansion_factor,
        num_attention_heads=b.num_attention_heads,
        ffn_dim=b.ffn_dim,
        dropout=b.dropout,
    )


def block_rule(c: TrainConfig) -> BlockRule:
    u = c.unfreeze
    return BlockRule(
        strategy=u.strategy.value,
        pattern=u.pattern,
        keywords=tuple(u.keywords),
        max_dots=u.max_dots,
        on_nested=u.on_nested.value,
    )


def stage_plans(c: TrainConfig) -> list[StagePlan]:
    """The schedule's stages from `schedule.start_at` on (all of them when it is null)."""
    plans = [
        StagePlan(
            name=s.name,
            scope=s.train.value,
            epochs=min(s.epochs, c.trainer.max_epochs_per_stage or s.epochs),
            head_lr=c.optim.lr * s.head_lr_scale,
            backbone_lr=c.optim.lr * s.backbone_lr_scale,
            last_n=c.unfreeze.last_n,
            kind=s.kind.value,
            data=s.data.value,
            ssl=None if s.kind.value == "supervised" else SSLSettings(
                mask_ratio=s.mask_ratio, stft_weight=s.stft_weight, contrastive_weight=s.contrastive_weight,
                temperature=s.temperature,
            ),
        )
        for s in c.schedule.stages
    ]
    start = c.schedule.start_at
    if start is None:
        return plans
    names = [p.name for p in plans]
    if start not in names:
        raise ConfigError(f"schedule.start_at={start!r} is not a stage of schedule={c.schedule.name}: {names}")
    if names.index(start) > 0 and not c.backbone.pretrained_path:
        raise ConfigError(
            f"schedule.start_at={start!r} skips {names[:names.index(start)]}, but backbone.pretrained_path is null, "
            "so their weights would be missing. Fix: backbone.pretrained_path=<output dir of the earlier run>/"
            f"stage-{names[names.index(start) - 1]}.pt"
        )
    return plans[names.index(start):]


def dataset_spec(c: TrainConfig) -> DatasetSpec:
    d = c.dataset
    return DatasetSpec(
        name=d.name,
        root=d.root,
        window_length=d.window_length,
        duration_s=d.duration_s,
        channels=d.channels,
        fold=d.fold,
        n_folds=d.n_folds,
        seed=c.seed,
        nonfinite=d.nonfinite,
        n_subjects=d.n_subjects,
        windows_per_subject=d.windows_per_subject,
        good_fraction=d.good_fraction,
        label_noise=d.label_noise,
        task=d.task,
        ppg_channels=tuple(d.ppg_channels),
        missing_records=d.missing_records,
        track=d.track,
    )


def pretrain_spec(c: TrainConfig) -> DatasetSpec:
    """The unlabeled corpus: the synthetic generator (other subjects: another seed) or a real one."""
    d = c.dataset
    if d.pretrain != "synthetic" and not d.pretrain_root:
        raise ConfigError(f"dataset.pretrain={d.pretrain} needs dataset.pretrain_root=<directory of the corpus>")
    return replace(
        dataset_spec(c), name=d.pretrain, root=d.pretrain_root, seed=c.seed + 10_000, n_subjects=d.pretrain_subjects,
        nonfinite="drop",
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    return torch.device(name)


def loop_settings(c: TrainConfig) -> LoopSettings:
    o, t = c.optim, c.trainer
    return LoopSettings(
        batch_size=o.batch_size,
        eval_batch_size=o.eval_batch_size,
        weight_decay=o.weight_decay,
        warmup_frac=o.warmup_frac,
        grad_clip=o.grad_clip,
        loss=o.loss.value,
        focal_gamma=o.focal_gamma,
        balanced_sampler=o.balanced_sampler,
        layer_decay=o.layer_decay,
        device=pick_device(t.device),
        amp=t.amp,
        compile=t.compile,
        progress=t.progress,
        collapse_threshold=t.collapse_threshold,
        collapse_action=t.collapse_action.value,
        max_batches=t.max_batches,
        seed=c.seed,
    )
