"""DictConfig -> the typed, validated config objects of `config/schema.py`, once, at the entrypoint.

Hydra's struct mode and the schema reject unknown keys and wrong types at compose time; `validate` adds
the checks a type cannot express (a positive learning rate, a regex that compiles, a window length that
matches the backbone) and says which key to change.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import replace

import torch
from omegaconf import DictConfig, OmegaConf

from ttm_experiments.config.schema import (
    BackboneConf, DatasetConf, InspectConfig, ScheduleConf, TrainConfig, parse_amp, parse_metric,
)
from ttm_experiments.errors import ConfigError

log = logging.getLogger(__name__)


def to_config(cfg: DictConfig) -> TrainConfig:
    """Resolve interpolations and return the typed config object; validate what types cannot."""
    config = OmegaConf.to_object(cfg)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"the composed config is a {type(config).__name__}, not TrainConfig: is train_schema first in the defaults?")
    config.trainer.amp = parse_amp(config.trainer.amp)  # one spelling below the CLI: AmpMode (a str)
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
    if c.dataset.nonfinite not in ("error", "drop"):
        raise ConfigError(f"dataset.nonfinite={c.dataset.nonfinite!r} must be 'error' or 'drop'")
    if isinstance(c, InspectConfig) and c.inspect.format not in ("text", "json"):
        raise ConfigError(f"inspect.format={c.inspect.format!r} must be 'text' or 'json'")
    _validate_metric(c)
    if not 0 <= c.trainer.collapse_threshold < 1:
        raise ConfigError(f"trainer.collapse_threshold={c.trainer.collapse_threshold} must be in [0, 1)")


def _validate_metric(c: TrainConfig) -> None:
    """`optimized_metric` parses, and an Optuna trial optimises it in its own direction."""
    metric = parse_metric(c.optimized_metric)
    if c.search.trial_number is not None and c.search.direction != metric.direction:
        raise ConfigError(
            f"optimized_metric={c.optimized_metric} is to {metric.direction}, but the study is to "
            f"{c.search.direction} (search.direction, from hydra.sweeper.direction). Fix: "
            f"hydra.sweeper.direction={metric.direction}, or another optimized_metric."
        )


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
            raise ConfigError("unfreeze.pattern is empty: give a regex, e.g. unfreeze.pattern='encoder\\.layers\\.\\d+'")
        try:
            re.compile(c.unfreeze.pattern)
        except re.error as err:
            raise ConfigError(f"unfreeze.pattern={c.unfreeze.pattern!r} is not a valid regex: {err}") from None


def _validate_schedule(schedule: ScheduleConf, *, pretrained: bool) -> None:
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
            f"schedule.start_at={start!r} skips {names[:names.index(start)]}, but backbone.pretrained_path is null, "
            "so their weights would be missing. Fix: backbone.pretrained_path=<output dir of the earlier run>/"
            f"stage-{names[names.index(start) - 1]}.pt"
        )


def pretrain_dataset(c: TrainConfig) -> tuple[DatasetConf, int]:
    """The unlabeled corpus and its seed: the synthetic generator (other subjects: another seed, derived from
    `dataset.split_seed`, not `seed`) or a real one.

    Its NaN or constant windows are dropped (counted), not refused: a long unlabeled recording always has some.
    """
    d = c.dataset
    if d.pretrain != "synthetic" and not d.pretrain_root:
        raise ConfigError(f"dataset.pretrain={d.pretrain} needs dataset.pretrain_root=<directory of the corpus>")
    corpus = replace(d, name=d.pretrain, root=d.pretrain_root, n_subjects=d.pretrain_subjects, nonfinite="drop")
    return corpus, d.split_seed + 10_000


def assign_gpu(job_num: int | None, n_gpus: int) -> int | None:
    """The GPU (an index into the visible ones) that job `job_num` of a multirun takes with trainer.device=auto.

    Job j takes GPU `j % n_gpus`: K jobs started together (joblib's `n_jobs=K`, numbered consecutively) spread
    evenly over the GPUs, several per GPU when K > n_gpus. A single run (`job_num` None) takes GPU 0. None when
    there is no GPU.
    """
    if n_gpus < 0:
        raise ValueError(f"n_gpus={n_gpus} must be >= 0")
    if job_num is not None and job_num < 0:
        raise ValueError(f"job_num={job_num} must be >= 0 (Hydra numbers a sweep's jobs from 0)")
    if n_gpus == 0:
        return None
    return 0 if job_num is None else job_num % n_gpus


def pick_device(name: str, job_num: int | None = None) -> torch.device:
    """`trainer.device` -> the device this process trains on; a CUDA one is also made the current device.

    `auto`: a CUDA GPU if there is one (multirun job `job_num` takes `assign_gpu(job_num, visible GPUs)`), else
    MPS, else the CPU. `cuda` is GPU 0 and `cuda:<i>` GPU i, both counted among the visible GPUs
    (CUDA_VISIBLE_DEVICES renumbers them from 0), for every job. The chosen GPU is made current
    (torch.cuda.set_device) so that what allocates on a bare "cuda" (a library, the CUDA context itself) lands on
    it too, not on cuda:0.
    """
    try:
        device = torch.device("cpu" if name == "auto" else name)
    except RuntimeError as err:
        raise ConfigError(f"trainer.device={name!r} is not a device ({err}). Fix: trainer.device=auto, cpu, "
                          "cuda, cuda:<index> or mps") from None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    if name == "auto":
        if torch.cuda.is_available():
            n_gpus = torch.cuda.device_count()
            device = torch.device("cuda", assign_gpu(job_num, n_gpus))
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = torch.device("mps")
    elif device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={name} but no CUDA device is visible{where}; use trainer.device=auto "
                              "or cpu")
        n_gpus = torch.cuda.device_count()
        device = torch.device("cuda", device.index or 0)
        if device.index >= n_gpus:
            raise ConfigError(
                f"trainer.device={name} but only {n_gpus} GPU(s) are visible{where}, numbered from 0 among the "
                f"visible ones. Fix: trainer.device=cuda:<0..{n_gpus - 1}>, or trainer.device=auto (multirun jobs "
                "spread over the visible GPUs)."
            )
    if device.type != "cuda":
        log.info("device %s (trainer.device=%s)", device, name)
        return device
    torch.cuda.set_device(device)
    job = "single run" if job_num is None else f"job {job_num}"
    log.info("%s -> %s of %d visible GPU%s%s (trainer.device=%s)", job, device, n_gpus, "" if n_gpus == 1 else "s",
             where, name)
    return device
