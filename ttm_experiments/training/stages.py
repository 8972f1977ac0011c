"""A schedule's stages as the loops run them, and what a stage reports after every epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ttm_experiments.config.schema import ScheduleConf, StageConf, StageKind


@dataclass(frozen=True)
class StagePlan:
    """One stage of `schedule.stages` with what it derives from other keys: the learning rates
    (`optim.lr`, `optim.ssl_lr` for a self-supervised stage, times the stage's factors) and the epochs
    (capped by `trainer.max_epochs_per_stage`)."""

    conf: StageConf
    epochs: int
    head_lr: float
    backbone_lr: float

    @property
    def name(self) -> str:
        return self.conf.name

    @property
    def scope(self) -> str:
        return self.conf.train.value

    @property
    def kind(self) -> str:
        return self.conf.kind.value

    @property
    def data(self) -> str:
        return self.conf.data.value

    @property
    def supervised(self) -> bool:
        return self.conf.kind == StageKind.supervised


def plan_stages(schedule: ScheduleConf, *, lr: float, ssl_lr: float, max_epochs: int) -> list[StagePlan]:
    """The stages from `schedule.start_at` on (all of them when it is null); `max_epochs` 0 = no cap.
    Self-supervised stages take `ssl_lr`, supervised ones `lr`: a fine-tuning grid over `lr` leaves them alone."""

    def base(s: StageConf) -> float:
        return lr if s.kind == StageKind.supervised else ssl_lr

    plans = [
        StagePlan(
            conf=s,
            epochs=min(s.epochs, max_epochs or s.epochs),
            head_lr=base(s) * s.head_lr_scale,
            backbone_lr=base(s) * s.backbone_lr_scale,
        )
        for s in schedule.stages
    ]
    names = [p.name for p in plans]
    return plans[names.index(schedule.start_at) :] if schedule.start_at is not None else plans


@dataclass
class EpochEnd:
    """Handed to the checkpoint writer after every epoch, before the epoch's metrics are logged."""

    stage_epoch: int
    epoch: int  # counted across stages
    optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    metrics: dict[str, float]
    extra: dict = field(default_factory=dict)  # what else the stage needs to continue (SSL heads, history)


OnEpochEnd = Callable[[EpochEnd], None]
