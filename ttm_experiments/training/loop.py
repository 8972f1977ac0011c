"""The supervised training loop: stages, epochs, metrics, best checkpoint, collapse guard (losses in `losses.py`,
parameter groups in `optim.py`).

Data sits in memory as tensors and is batched by indexing (no per-sample collate); metrics are computed
once per epoch from collected logits, and tracking is called once per epoch, never per step.

A stage that trains the head only (the whole backbone frozen) runs the backbone once, in evaluation mode,
and trains the head on its cached outputs for every epoch of the stage (`FrozenFeatures`): the head stage
costs about one forward pass instead of one per epoch. `bench/bench.py` measures the loop against a bare
PyTorch loop and `transformers.Trainer` (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ttm_experiments.config.schema import (
    DEFAULT_SELECTION,
    CollapseAction,
    FrozenMode,
    Metric,
    OptimConf,
    TrainerConf,
    UnfreezeConf,
)
from ttm_experiments.data.base import WindowSet
from ttm_experiments.errors import ConfigError, UserError
from ttm_experiments.metrics.classification import classification_metrics, collapsed_classes, softmax
from ttm_experiments.metrics.on_device import classification_metrics_on_device
from ttm_experiments.models.backbones import Backbone, Classifier
from ttm_experiments.models.unfreeze import UnfreezeReport, apply_stage, find_blocks, freeze_frozen_modes
from ttm_experiments.tracking.mlflow_tracker import Tracker
from ttm_experiments.training import signals
from ttm_experiments.training.losses import build_loss, class_weights
from ttm_experiments.training.optim import Precision, make_optimizer, make_scheduler, param_groups
from ttm_experiments.training.stages import EpochEnd, OnEpochEnd, StagePlan
from ttm_experiments.utils import faults

log = logging.getLogger(__name__)

# The backbone's outputs of a head-only stage are cached up to this size (train + val: ~80k ttm_1024 windows);
# above it the frozen backbone runs per batch instead (the same values: evaluation mode, no autograd).
FEATURE_CACHE_BYTES = 1 << 30


@dataclass
class EpochRecord:
    stage: str
    epoch: int  # counted across stages, from 1
    train: dict[str, float]
    val: dict[str, float]
    collapsed: list[str]


@dataclass
class LoopResult:
    history: list[EpochRecord] = field(default_factory=list)
    reports: list[UnfreezeReport] = field(default_factory=list)
    best_epoch: int = 0
    best_stage: str = ""
    best_val_auroc: float = -math.inf  # val/auroc at the best epoch (whatever the selection metric)
    best_value: float = math.nan  # the selection metric (`optimized_metric`) at the best epoch
    collapse_epochs: list[int] = field(default_factory=list)
    ssl: list[dict] = field(default_factory=list)  # per self-supervised stage: its last epoch and probe AUROC


EPOCH_KEYS = ("loss", "acc", "balanced_acc", "auroc", "auprc", "f1")  # per split and epoch, with acc/<class>


def check_selection_metric(metric: Metric, class_names: tuple[str, ...]) -> None:
    """`optimized_metric` must be one the supervised stages log every epoch: checked before any training."""
    logged = [*EPOCH_KEYS, *(f"acc/{c}" for c in class_names)]
    if metric.key not in logged:
        raise ConfigError(
            f"optimized_metric={metric.split}/{metric.key} is not logged by the training loop, so no epoch could be "
            f"selected. Fix: optimized_metric=<split>/<one of {', '.join(logged)}> (split: train or val), e.g. "
            "val/auroc or val/loss."
        )


class NonFiniteTraining(FloatingPointError, UserError):
    """Training produced NaN or Inf (the loss, the weights or the outputs): the stage stops, the run is FAILED,
    and the message names the stage, the step and the rates, with the fix."""


def _fix(rates: str) -> str:
    return (
        f"The stage's learning rates are {rates}. Fix: lower optim.lr (or set optim.grad_clip), check the data "
        "for extreme values, or turn off trainer.amp."
    )


def peak_rates(optimizer) -> str:
    """The stage's peak learning rates (its first four parameter groups), as a message names them."""
    return ", ".join(f"{g.get('initial_lr', g['lr']):.3g}" for g in optimizer.param_groups[:4])


def check_finite_weights(model: nn.Module, desc: str, steps: int, rates: str) -> None:
    """After an epoch's steps: every trainable weight is finite (one pass over the parameters per epoch)."""
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteTraining(
            f"{desc}: after {steps} step(s) {len(bad)} trainable weight tensor(s) hold NaN or Inf, e.g. {bad[:3]}. "
            + _fix(rates)
        )


class NonFiniteLoss(NonFiniteTraining):
    """The training loss became NaN or Inf."""

    def __init__(self, desc: str, step: int, value: float):
        super().__init__(
            f"{desc}: the training loss is {value} at batch {step}. Lower optim.lr (or optim.grad_clip), check the "
            "data for extreme values, or turn off trainer.amp."
        )


class GradientMismatch(RuntimeError):
    """Parameters the unfreeze report calls trainable did not all receive gradients, or frozen ones did."""


def check_trainable_gradients(model: nn.Module, desc: str) -> None:
    """After the first backward of a stage: exactly the trainable parameters have gradients.

    Catches a frozen encoder that the report calls trainable (the predecessor's failure) and parameters that
    are trainable but unused. One pass over the parameters per stage: negligible.
    """
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    if no_grad or frozen_with_grad:
        raise GradientMismatch(
            f"{desc}: {len(no_grad)} trainable parameter tensors got no gradient ({no_grad[:5]}) and "
            f"{len(frozen_with_grad)} frozen ones got one ({frozen_with_grad[:5]}); the unfreeze report would be "
            "wrong. This is a bug in the model or the unfreeze rule: report it with `ttm-inspect` output."
        )


class FrozenFeatures:
    """The frozen backbone's outputs `(hidden, loc, scale)` for the rows of `x`, in a head-only stage.

    With the whole backbone frozen its outputs do not change during the stage: each row's are computed the
    first time the row is asked for (so the first epoch costs one forward pass, and the first step comes as
    early as before), in evaluation mode (no dropout) and without autograd, and kept. With `cache=False`
    (too large) they are recomputed per batch: the same values, at the cost of a forward pass per epoch.
    """

    def __init__(self, backbone: nn.Module, x: torch.Tensor, autocast: Callable, cache: bool):
        self.backbone, self.x, self.autocast = backbone, x, autocast
        self.filled = torch.zeros(len(x), dtype=torch.bool) if cache else None  # on the CPU: no device syncs
        self.complete = False
        self.store: tuple[torch.Tensor, ...] = ()

    @staticmethod
    @torch.no_grad()
    def bytes_needed(backbone: Backbone, x: torch.Tensor, autocast: Callable, rows: int) -> int:
        """Measured, not derived from the config (backbones differ in what they return per window: patches,
        register tokens, virtual channels, one embedding): one window through the backbone as `_run` does it."""
        backbone.eval()
        with autocast():
            out = backbone(x[:1])
        return rows * sum(t.numel() * t.element_size() for t in out)

    @torch.no_grad()
    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.backbone.eval()
        with self.autocast():
            return tuple(t.detach() for t in self.backbone(x))

    def rows(self, index: torch.Tensor, device_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The outputs for rows `index` (a CPU index tensor; `device_index`: the same on the data's device)."""
        if device_index is None:
            device_index = index.to(self.x.device)
        if self.filled is None:
            return self._run(self.x[device_index])
        if not self.complete:
            missing = index[~self.filled[index]].unique()
            if len(missing):
                on_device = missing.to(self.x.device)
                out = self._run(self.x[on_device])
                if not self.store:
                    self.store = tuple(t.new_empty((len(self.x), *t.shape[1:])) for t in out)
                for stored, new in zip(self.store, out):
                    stored[on_device] = new
                self.filled[missing] = True
                self.complete = bool(self.filled.all())
        return tuple(t[device_index] for t in self.store)

    def chunks(self, size: int):
        """All rows in order, `size` at a time (evaluation)."""
        for start in range(0, len(self.x), size):
            yield self.rows(torch.arange(start, min(start + size, len(self.x))))


class Trainer:
    """Runs the stages of a schedule on one model and keeps the best checkpoint by `selection`
    (`optimized_metric`, in its direction)."""

    def __init__(
        self,
        model: Classifier,
        train: WindowSet,
        val: WindowSet,
        *,
        optim: OptimConf,
        trainer: TrainerConf,
        unfreeze: UnfreezeConf,
        device: torch.device,
        seed: int,
        tracker: Tracker,
        epoch_hooks: tuple[Callable[[EpochRecord], None], ...] = (),
        selection: Metric = DEFAULT_SELECTION,
        precision: Precision | None = None,
    ):
        self.model = model.to(device)
        # autocast and (fp16) the gradient scaler; the recipe shares one with the SSL stages (one scaler state)
        self.precision = precision if precision is not None else Precision(device, trainer.amp)
        self.selection = selection
        self.optim, self.conf, self.unfreeze, self.device = optim, trainer, unfreeze, device
        self.tracker = tracker
        # called after every epoch with its record (e.g. Optuna pruning, which raises errors.Pruned)
        self.epoch_hooks = epoch_hooks
        self.class_names = train.class_names
        self.x_train, self.y_train = self.tensors(train)
        self.x_val, self.y_val = self.tensors(val)
        self.loss_fn = build_loss(optim, train.labels, len(self.class_names)).to(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.best_state: dict[str, torch.Tensor] | None = None
        # the model the steps call: the model itself, or compiled anew for each stage (trainer.compile)
        self.step_model: nn.Module = self.model
        # set for a head-only stage: the frozen backbone's outputs for the training and validation rows
        self.frozen: tuple[FrozenFeatures, FrozenFeatures] | None = None

    def tensors(self, ws: WindowSet) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ws.signals).to(self.device), torch.from_numpy(ws.labels).to(self.device)

    def _autocast(self):
        return self.precision.autocast()

    def steps_per_epoch(self) -> int:
        n, size = len(self.y_train), self.optim.batch_size
        count = math.ceil(n / size)
        if count > 1 and n % size == 1:  # BatchNorm cannot train on a last batch of one: drop it
            count -= 1
        return min(count, self.conf.max_batches) if self.conf.max_batches else count

    def _batches(self) -> list[torch.Tensor]:
        n = len(self.y_train)
        if self.optim.balanced_sampler:
            weights = class_weights(self.y_train.cpu().numpy(), len(self.class_names))[self.y_train.cpu()]
            order = torch.multinomial(weights, n, replacement=True, generator=self.generator)
        else:
            order = torch.randperm(n, generator=self.generator)
        return list(order.split(self.optim.batch_size))[: self.steps_per_epoch()]  # on the CPU

    @torch.inference_mode()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for `x` on the device, in evaluation mode, batched: concatenated there, no host sync per chunk."""
        self.model.eval()
        with self._autocast():
            out = [self.step_model(chunk).float() for chunk in x.split(self.optim.eval_batch_size)]
        return torch.cat(out)

    def predict(self, x: torch.Tensor) -> np.ndarray:
        """Logits for `x`, in evaluation mode, batched, on the host."""
        return self._logits(x).cpu().numpy()  # one device sync, not one per chunk

    @torch.inference_mode()
    def _logits_frozen(self, features: FrozenFeatures) -> torch.Tensor:
        """Logits (on the device) from the frozen backbone's outputs: the head alone, in evaluation mode."""
        self.model.eval()
        with self._autocast():
            out = [self.model.head(*parts).float() for parts in features.chunks(self.optim.eval_batch_size)]
        return torch.cat(out)

    def _frozen_backbone(self) -> bool:
        return not any(p.requires_grad for p in self.model.backbone.parameters())

    def train_epoch(self, optimizer, scheduler, desc: str, check_gradients: bool = False) -> dict[str, float]:
        """One pass over the training split. Raises NonFiniteLoss at the first NaN/Inf loss (checked every
        step on CPU, where it costs nothing; once per epoch on an accelerator, to avoid a sync per step)."""
        from tqdm.auto import tqdm

        self.model.train()
        if self.unfreeze.frozen_mode == FrozenMode.eval:  # frozen means frozen: no dropout, fixed BatchNorm
            freeze_frozen_modes(self.model)
        if self.frozen is not None:
            self.model.backbone.eval()  # frozen: no dropout; its outputs come from the stage's cache
        logits_all, labels_all, losses = [], [], []
        per_step_check = self.device.type == "cpu"
        batches = self._batches()
        # the epoch's order goes to the device in one copy; the CPU batches index the frozen-backbone cache
        on_device = torch.cat(batches).to(self.device).split([len(b) for b in batches])
        for step, (rows, index) in enumerate(
            zip(tqdm(batches, desc=desc, leave=False, disable=not self.conf.progress), on_device)
        ):
            y = self.y_train[index]
            with self._autocast():
                if self.frozen is not None:
                    logits = self.model.head(*self.frozen[0].rows(rows, index))
                else:
                    logits = self.step_model(self.x_train[index])
                loss = self.loss_fn(logits.float(), y)
            if per_step_check and not torch.isfinite(loss):
                raise NonFiniteLoss(desc, step, float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            check = (lambda: check_trainable_gradients(self.model, desc)) if check_gradients and step == 0 else None
            self.precision.step(loss, optimizer, grad_clip=self.optim.grad_clip, after_backward=check)
            scheduler.step()
            signals.check()  # SIGTERM/SIGINT: stop here, after a whole step (resume redoes the epoch)
            faults.point("step")  # chaos test (bench/chaos.py): a SIGKILL after a step
            losses.append(loss.detach())
            logits_all.append(logits.detach().float())
            labels_all.append(y)
        # one device sync per epoch, not per step
        stacked = torch.stack(losses)
        if not per_step_check and not torch.isfinite(stacked).all():
            first = int((~torch.isfinite(stacked)).nonzero()[0])
            raise NonFiniteLoss(desc, first, float(stacked[first]))
        rates = peak_rates(optimizer)
        # a last step can leave the weights NaN with every loss finite: caught here, before any metric reads them
        check_finite_weights(self.model, desc, len(losses), rates)
        logits_np = torch.cat(logits_all).cpu().numpy()
        labels_np = torch.cat(labels_all).cpu().numpy()
        if not np.isfinite(logits_np).all():
            raise NonFiniteTraining(
                f"{desc}: the model's outputs hold NaN or Inf within {len(losses)} step(s). " + _fix(rates)
            )
        metrics = classification_metrics(labels_np, softmax(logits_np), self.class_names)
        return {"loss": float(stacked.mean()), **metrics}

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, float], np.ndarray]:
        """Loss and metrics of `x` against `y` (on the device), and the logits on the host."""
        logits = self._logits(x)
        return self._metrics(logits, y), logits.cpu().numpy()

    def evaluate_val(self) -> dict[str, float]:
        """Validation metrics; in a head-only stage from the cached backbone outputs (the same values)."""
        if self.frozen is not None:
            return self._metrics(self._logits_frozen(self.frozen[1]), self.y_val)
        return self._metrics(self._logits(self.x_val), self.y_val)

    @torch.inference_mode()
    def _metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Loss and classification metrics of `logits` against `y`, both on the device.

        On a CUDA GPU everything is computed there and comes back in one transfer (scikit-learn on the host cost
        ~15 % of a GPU evaluation); elsewhere (CPU, MPS: no float64) scikit-learn computes them."""
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteTraining("evaluation: the model's outputs hold NaN or Inf. " + _fix("those of the stage"))
        loss = self.loss_fn(logits, y)
        if self.device.type == "cuda":
            return classification_metrics_on_device(y, logits, self.class_names, extra={"loss": loss})
        metrics = classification_metrics(y.cpu().numpy(), softmax(logits.cpu().numpy()), self.class_names)
        return {"loss": float(loss), **metrics}

    def run_stage(
        self,
        stage: StagePlan,
        result: LoopResult,
        epoch: int,
        *,
        resume: dict | None = None,
        on_epoch_end: OnEpochEnd | None = None,
    ) -> int:
        """One supervised stage in its own nested run; returns the last epoch number (across stages).

        `resume` (from a checkpoint) restores the optimizer and scheduler and skips the epochs already done;
        `on_epoch_end` writes the per-epoch checkpoint.
        """
        report, selected = apply_stage(self.model, self.unfreeze, scope=stage.scope, stage=stage.name)
        self.model.zero_grad(set_to_none=True)  # no stale gradients from an earlier stage
        all_blocks = find_blocks(self.model.backbone.model, self.unfreeze) if stage.scope == "full" else selected
        groups = param_groups(self.model, stage, selected, all_blocks, self.optim.layer_decay)
        optimizer = make_optimizer(groups, weight_decay=self.optim.weight_decay, device=self.device)
        scheduler = make_scheduler(
            self.optim.scheduler, optimizer, stage.epochs * self.steps_per_epoch(), self.optim.warmup_frac
        )
        done = 0
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            done = resume["stage_epoch"]
            log.info("[%s] resuming after epoch %d of %d", stage.name, done, stage.epochs)
        else:
            result.reports.append(report)
            log.info("\n%s", report.format())
            self.tracker.start_stage(
                stage.name, {"scope": stage.scope, "kind": "supervised", "unfreeze.empty": str(report.empty).lower()}
            )
            self.tracker.log_dict(report.to_dict(), f"unfreeze/{stage.name}.json", stage=True)
            self.tracker.log_dict(report.to_dict(), f"unfreeze/{stage.name}.json")
        self.frozen = self._frozen_features() if self._frozen_backbone() else None
        if self.conf.compile and self.frozen is None:
            self.step_model = compile_model(self.model)
        try:
            return self._run_epochs(
                stage, result, epoch, done=done, optimizer=optimizer, scheduler=scheduler, on_epoch_end=on_epoch_end
            )
        finally:
            self.frozen = None

    def _frozen_features(self) -> tuple[FrozenFeatures, FrozenFeatures]:
        """Head-only stage: the frozen backbone's outputs for train and val (cached when they fit)."""
        rows = len(self.x_train) + len(self.x_val)
        need = FrozenFeatures.bytes_needed(self.model.backbone, self.x_train, self._autocast, rows)
        cache = need <= FEATURE_CACHE_BYTES
        if not cache:
            log.info(
                "head-only stage: the backbone's outputs (%.0f MiB) exceed the cache (%.0f MiB); the frozen "
                "backbone runs per batch",
                need / 2**20,
                FEATURE_CACHE_BYTES / 2**20,
            )
        return (
            FrozenFeatures(self.model.backbone, self.x_train, self._autocast, cache),
            FrozenFeatures(self.model.backbone, self.x_val, self._autocast, cache),
        )

    def _run_epochs(
        self,
        stage: StagePlan,
        result: LoopResult,
        epoch: int,
        *,
        done: int,
        optimizer,
        scheduler,
        on_epoch_end: OnEpochEnd | None,
    ) -> int:
        for stage_epoch in range(done + 1, stage.epochs + 1):
            epoch += 1
            desc = f"[{stage.name}] epoch {stage_epoch}/{stage.epochs}"
            train_metrics = self.train_epoch(optimizer, scheduler, desc, check_gradients=stage_epoch == 1)
            try:
                val_metrics = self.evaluate_val()
            except NonFiniteTraining:  # the same failure, named with the stage, the epoch and the rates
                raise NonFiniteTraining(
                    f"{desc}: on the validation split the model's outputs hold NaN or Inf (evaluation mode; the "
                    "training outputs were finite). " + _fix(peak_rates(optimizer))
                ) from None
            collapsed = collapsed_classes(val_metrics, self.class_names, self.conf.collapse_threshold)
            record = EpochRecord(stage.name, epoch, train_metrics, val_metrics, collapsed)
            result.history.append(record)
            if collapsed:
                result.collapse_epochs.append(epoch)
            self._select(record, result)
            if on_epoch_end is not None:  # the checkpoint is written before the epoch's metrics are logged
                on_epoch_end(EpochEnd(stage_epoch, epoch, optimizer, scheduler, self.epoch_metrics(record)))
            faults.point("epoch.supervised")  # chaos test: the state written, the metrics not yet logged
            self._log_epoch(record, desc)
            if collapsed:
                self._warn_collapse(record)
            for hook in self.epoch_hooks:
                hook(record)
            if collapsed and self.conf.collapse_action == CollapseAction.stop:
                log.warning("[%s] stopping the stage at epoch %d (trainer.collapse_action=stop)", stage.name, epoch)
                self.tracker.set_tags({"collapse_stop": f"{stage.name}@{epoch}:{','.join(collapsed)}"}, stage=True)
                break
            if self._early_stop(stage.name, result, stage_epoch, stage.epochs):
                break
        stage_collapsed = any(r.collapsed for r in result.history if r.stage == stage.name)
        self.tracker.set_tags({"mode_collapse": str(stage_collapsed).lower()}, stage=True)
        self.tracker.end_stage()
        return epoch

    def _early_stop(self, stage: str, result: LoopResult, stage_epoch: int, epochs: int) -> bool:
        """`trainer.early_stopping_patience`: has the stage gone that many epochs without a better selection metric?
        Counted from the stage's records in `result.history`, so a resumed stage counts as an uninterrupted one."""
        patience = self.conf.early_stopping_patience
        if not patience or stage_epoch >= epochs:
            return False
        m = self.selection
        values = [self._selection_value(r) for r in result.history if r.stage == stage]
        since = epochs_without_improvement(values, m.better)
        if since < patience:
            return False
        log.info(
            "[%s] early stop after epoch %d of %d: %s not better for %d epoch(s) (trainer.early_stopping_patience=%d)",
            stage,
            stage_epoch,
            epochs,
            m.name,
            since,
            patience,
        )
        self.tracker.set_tags({"early_stop": f"epoch {stage_epoch} of {epochs}"}, stage=True)
        self.tracker.set_tags({f"early_stop.{stage}": f"epoch {stage_epoch} of {epochs}"})
        return True

    def _selection_value(self, record: EpochRecord) -> float:
        """The selection metric (`optimized_metric`) of one epoch; NaN where the epoch lacks it."""
        m = self.selection
        return float((record.val if m.split == "val" else record.train).get(m.key, math.nan))

    def _select(self, record: EpochRecord, result: LoopResult) -> None:
        """Keep this epoch's weights when it is the best so far on the selection metric."""
        m = self.selection
        value = self._selection_value(record)
        if result.best_epoch == 0 and not math.isfinite(value):
            return
        if result.best_epoch == 0 or m.better(value, result.best_value):
            result.best_value, result.best_val_auroc = value, record.val.get("auroc", math.nan)
            result.best_epoch, result.best_stage = record.epoch, record.stage
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    @staticmethod
    def epoch_metrics(record: EpochRecord) -> dict[str, float]:
        """The flat metric names of one epoch, as MLflow receives them."""
        metrics = {f"train/{k}": v for k, v in record.train.items()}
        metrics.update({f"val/{k}": v for k, v in record.val.items()})
        metrics["val/collapsed"] = float(bool(record.collapsed))
        return metrics

    def _log_epoch(self, record: EpochRecord, desc: str) -> None:
        self.tracker.log_metrics(self.epoch_metrics(record), step=record.epoch)
        per_class = "  ".join(f"{c} {record.val.get(f'acc/{c}', float('nan')):.2f}" for c in self.class_names)
        log.info(
            "%s  train loss %.4f auroc %.3f | val loss %.4f auroc %.3f bal_acc %.3f | val acc: %s",
            desc,
            record.train["loss"],
            record.train.get("auroc", float("nan")),
            record.val["loss"],
            record.val.get("auroc", float("nan")),
            record.val["balanced_acc"],
            per_class,
        )

    def _warn_collapse(self, record: EpochRecord) -> None:
        rates = ", ".join(f"{c} {record.val.get(f'acc/{c}', 0.0):.3f}" for c in record.collapsed)
        log.warning(
            "MODE COLLAPSE at epoch %d (stage %s): validation accuracy of %s is below %.2f; the model has "
            "(almost) stopped predicting that class. Check the learning rate, the class weights "
            "(optim.loss) and what this stage unfreezes.",
            record.epoch,
            record.stage,
            rates,
            self.conf.collapse_threshold,
        )
        # the stage run says it collapsed; the parent's `mode_collapse` describes the selected checkpoint (finish)
        self.tracker.set_tags({"mode_collapse": "true"}, stage=True)

    def restore_best(self) -> None:
        if self.best_state is None:
            raise RuntimeError("no epoch was evaluated, so there is no best checkpoint")
        self.model.load_state_dict(self.best_state)


def epochs_without_improvement(values: list[float], better: Callable[[float, float], bool]) -> int:
    """How many of the last `values` came after the best one (the first best; NaN is never best)."""
    best_at = None
    for i, v in enumerate(values):
        if math.isfinite(v) and (best_at is None or better(v, values[best_at])):
            best_at = i
    return len(values) if best_at is None else len(values) - 1 - best_at


def compile_model(model: nn.Module) -> nn.Module:
    """`torch.compile` for the training and evaluation steps of one stage (trainer.compile).

    The compiled module shares the model's parameters. Compiled graphs are dropped first: a graph traced while
    a block was frozen gives that block no gradient when a later stage unfreezes it (seen with torch 2.11, and
    caught by `check_trainable_gradients`), so every stage compiles afresh. Train and eval mode are separate
    graphs, and a second batch size (the short last batch) recompiles once with a dynamic batch dimension.
    Compiling costs tens of seconds (minutes on 2 CPU cores) and was not faster on CPU: see BENCHMARKS.md."""
    import torch._dynamo

    torch._dynamo.reset()
    return torch.compile(model, dynamic=None)
