"""DictConfig -> the typed, validated config objects of `config/schema.py`, once, at the entrypoint.

Hydra's struct mode and the schema reject unknown keys and wrong types at compose time; `validate` adds
the checks a type cannot express (a positive learning rate, a regex that compiles, a window length that
matches the backbone) and says which key to change.
"""

from __future__ import annotations

import logging
import math
import re

from omegaconf import DictConfig, OmegaConf

from ttm_experiments.config.schema import (
    BackboneConf,
    ScheduleConf,
    SchedulerKind,
    TrainConfig,
    parse_amp,
    parse_metric,
    parse_pruner,
)
from ttm_experiments.errors import ConfigError, UserError

log = logging.getLogger(__name__)


def to_config(cfg: DictConfig) -> TrainConfig:
    """Resolve interpolations and return the typed config object; validate what types cannot."""
    config = OmegaConf.to_object(cfg)
    if not isinstance(config, TrainConfig):
        raise ConfigError(
            f"the composed config is a {type(config).__name__}, not TrainConfig: is train_schema first in the defaults?"
        )
    # `trainer.amp` is a str node (false/true arrive as booleans, which an Enum node refuses: see TrainerConf);
    # here, once, every spelling becomes AmpMode, the one type below the CLI
    config.trainer.amp = parse_amp(config.trainer.amp)
    validate(config)
    return config


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{name}={value} must be a finite number {'>= 0' if allow_zero else '> 0'}")


def validate(c: TrainConfig) -> None:
    """Every check a type cannot express, each naming the key and the fix."""
    _validate_optim(c)
    _validate_backbone(c.backbone)
    _validate_unfreeze(c)
    _validate_schedule(c.schedule, pretrained=bool(c.backbone.pretrained_path))
    if c.dataset.window_length != c.backbone.context_length:
        raise ConfigError(
            f"dataset.window_length={c.dataset.window_length} differs from backbone.context_length="
            f"{c.backbone.context_length}; windows are never padded or cropped. Leave dataset.window_length "
            "unset (it follows the backbone) or choose a backbone with that context length."
        )
    _positive("dataset.duration_s", c.dataset.duration_s)
    _positive("tracking.system_metrics_interval_s", c.tracking.system_metrics_interval_s)
    _validate_metric(c)
    from ttm_experiments.training import lr_finder  # torch: imported only when a config is validated

    lr_finder.check(c)  # optim.lr_find where no finder can serve (a baseline, a probe, a self-supervised start)
    from ttm_experiments.models import tspulse_head

    tspulse_head.check(c)  # backbone.head=tspulse and its options where they cannot act
    from ttm_experiments.models import chronos

    chronos.check(c)  # a Chronos-Bolt window length the model cannot read whole
    from ttm_experiments.models import mantis

    mantis.check(c)  # a Mantis context it cannot cut into tokens; self-supervised stages (nothing to mask)
    if c.optim.scheduler == SchedulerKind.onecycle and not 0 < c.optim.warmup_frac < 1:
        raise ConfigError(
            f"optim.scheduler=onecycle needs 0 < optim.warmup_frac < 1 (the share of steps before the peak rate), got "
            f"{c.optim.warmup_frac}. Fix: optim.warmup_frac=0.3 (torch's default) or 0.1."
        )
    if c.trainer.early_stopping_patience < 0:
        raise ConfigError(
            f"trainer.early_stopping_patience={c.trainer.early_stopping_patience}: a number of epochs. Fix: 0 (off) "
            "or a positive count, e.g. trainer.early_stopping_patience=3."
        )
    if not 0 <= c.trainer.collapse_threshold < 1:
        raise ConfigError(f"trainer.collapse_threshold={c.trainer.collapse_threshold} must be in [0, 1)")


def _validate_metric(c: TrainConfig) -> None:
    """`optimized_metric` parses, and an Optuna trial optimises it in its own direction."""
    metric = parse_metric(c.optimized_metric)
    if c.search.trial_number is not None and c.search.direction.value != metric.direction:
        raise ConfigError(
            f"optimized_metric={c.optimized_metric} is to {metric.direction}, but the study is to "
            f"{c.search.direction.value} (search.direction, from hydra.sweeper.direction). Fix: "
            f"hydra.sweeper.direction={metric.direction}, or another optimized_metric."
        )
    parse_pruner(c.search.pruner, key="search.pruner")  # a spec string with arguments: its name checked here


def _validate_optim(c: TrainConfig) -> None:
    _positive("optim.lr", c.optim.lr)
    _positive("optim.ssl_lr", c.optim.ssl_lr)
    _positive("optim.weight_decay", c.optim.weight_decay, allow_zero=True)
    _positive("optim.batch_size", c.optim.batch_size)
    _positive("optim.eval_batch_size", c.optim.eval_batch_size)
    _positive("optim.layer_decay", c.optim.layer_decay)
    _positive("optim.pretrained_backbone_lr_scale", c.optim.pretrained_backbone_lr_scale)
    if c.optim.pretrained_layer_decay is not None:
        _positive("optim.pretrained_layer_decay", c.optim.pretrained_layer_decay)
    if not 0 <= c.optim.warmup_frac < 1:
        raise ConfigError(f"optim.warmup_frac={c.optim.warmup_frac} must be in [0, 1)")
    if c.optim.balanced_sampler and c.optim.loss.value != "ce":
        raise ConfigError(
            f"optim.balanced_sampler=true with optim.loss={c.optim.loss.value} corrects the class imbalance twice "
            "(the sampler draws classes evenly and the loss weights them by inverse frequency again). Fix: "
            "optim.loss=ce with the sampler, or optim.balanced_sampler=false with the weighted loss."
        )


def _validate_backbone(b: BackboneConf) -> None:
    for key in ("dropout", "head_dropout"):
        value = getattr(b, key)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"backbone.{key}={value} must be in [0, 1), or null (from the checkpoint)")
    if b.revision is not None and not b.revision.strip():
        raise ConfigError("backbone.revision is empty: give a branch, tag or commit, or null (= main)")


def _validate_unfreeze(c: TrainConfig) -> None:
    if c.unfreeze.last_n < 0:
        raise ConfigError(f"unfreeze.last_n={c.unfreeze.last_n} must be >= 0 (0 = head only)")
    if c.unfreeze.strategy.value == "pattern":
        if not c.unfreeze.pattern:
            raise ConfigError(
                "unfreeze.pattern is empty: give a regex, e.g. unfreeze.pattern='encoder\\.layers\\.\\d+'"
            )
        compile_pattern(c.unfreeze.pattern)


def compile_pattern(pattern: str, error: type[UserError] = ConfigError) -> re.Pattern:
    """`unfreeze.pattern` compiled, or `error` naming the key: the one regex check of spec validation and of
    `models/unfreeze.py` (which raises UnfreezeError)."""
    try:
        return re.compile(pattern)
    except re.error as err:
        raise error(f"unfreeze.pattern={pattern!r} is not a valid regex: {err}") from None


def _validate_schedule(schedule: ScheduleConf, *, pretrained: bool) -> None:
    if schedule.probe_c_grid:  # schedule=linear_probe: a grid of C and no stages (training/linear_probe.py)
        if schedule.stages:
            raise ConfigError(
                f"schedule={schedule.name} has both stages and schedule.probe_c_grid: a linear probe trains no stage. "
                "Fix: schedule=linear_probe as shipped, or schedule.probe_c_grid=[] for a trained schedule."
            )
        for i, value in enumerate(schedule.probe_c_grid):
            _positive(f"schedule.probe_c_grid[{i}]", value)
        return
    if not schedule.stages:
        raise ConfigError(f"schedule={schedule.name} has no stages")
    names = [s.name for s in schedule.stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"schedule stage names must be unique, got {names}")
    for i, stage in enumerate(schedule.stages):
        if stage.epochs < 1:
            raise ConfigError(f"schedule.stages[{i}] ({stage.name}).epochs={stage.epochs} must be >= 1")
        _positive(f"schedule.stages[{i}].head_lr_scale", stage.head_lr_scale)
        if not 0 < stage.mask_ratio < 1:
            raise ConfigError(f"schedule.stages[{i}] ({stage.name}).mask_ratio={stage.mask_ratio} must be in (0, 1)")
        if stage.kind.value == "supervised" and stage.data.value != "target":
            raise ConfigError(f"schedule.stages[{i}] ({stage.name}) is supervised: it trains on data=target only")
        backbone_needed = stage.train.value != "head" or stage.kind.value != "supervised"
        _positive(f"schedule.stages[{i}].backbone_lr_scale", stage.backbone_lr_scale, allow_zero=not backbone_needed)
    start = schedule.start_at
    if start is None:
        return
    if start not in names:
        raise ConfigError(f"schedule.start_at={start!r} is not a stage of schedule={schedule.name}: {names}")
    if names.index(start) > 0 and not pretrained:
        raise ConfigError(
            f"schedule.start_at={start!r} skips {names[: names.index(start)]}, but backbone.pretrained_path is null, "
            "so their weights would be missing. Fix: backbone.pretrained_path=<output dir of the earlier run>/"
            f"stage-{names[names.index(start) - 1]}.pt"
        )
