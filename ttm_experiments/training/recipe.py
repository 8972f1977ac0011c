"""The training recipe: setup (check everything), train (the schedule), finish (test, record, summarise).

Everything that can be wrong with the input is checked in `setup`, before the first epoch: the tracking
store, the data, the checkpoint, and every stage's unfreeze selection. `BaselineRecipe`
(`training/baseline.py`) is the other recipe; both share the functions at the top of this module.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ttm_experiments.config.schema import TrainConfig, parse_metric
from ttm_experiments.data import inner_folds, label_fraction
from ttm_experiments.data.prepare import (
    RowView,
    Splits,
    check_windows,
    describe_splits,
    load_pretrain_corpus,
    load_windows,
    split_subject_wise,
)
from ttm_experiments.errors import Pruned, RunDirInUse, StoreError
from ttm_experiments.metrics.classification import softmax
from ttm_experiments.models import chronos
from ttm_experiments.models.amplitude import AmplitudeRange
from ttm_experiments.models.checkpoint import save_classifier
from ttm_experiments.models.pretrained import build_model, locate_weights
from ttm_experiments.models.unfreeze import plan_stage
from ttm_experiments.tracking.mlflow_tracker import MlflowTracker
from ttm_experiments.tracking.run_names import run_name
from ttm_experiments.training import lr_finder, resume, signals, stage_cache
from ttm_experiments.training.device import pick_device
from ttm_experiments.training.finetune import finetune_rates
from ttm_experiments.training.inputs import split_inputs, windows_digest
from ttm_experiments.training.loop import LoopResult, Trainer, check_selection_metric
from ttm_experiments.training.optim import Precision, check_amp
from ttm_experiments.training.record import (
    config_params,
    objective_value,
    pretrain_summary,
    record_model,
    record_test,
    summary_table,
    test_metrics,
)
from ttm_experiments.training.ssl import SSLRunner, linear_probe_auroc
from ttm_experiments.training.stages import EpochEnd, StagePlan, plan_stages
from ttm_experiments.training.trial import epoch_hooks, search_tags
from ttm_experiments.utils.files import remove_stale_temporaries
from ttm_experiments.utils.locks import holder, try_lock

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """Where the run writes and how it belongs to a sweep (filled by the CLI from Hydra)."""

    output_dir: Path
    config_yaml: str
    sweep_id: str | None = None
    job_num: int | None = None
    overrides: tuple[str, ...] = ()


@dataclass
class RunOutcome:
    objective: float
    test: dict[str, float]
    run_id: str
    best_epoch: int
    best_stage: str


class Recipe(Protocol):
    """A run in three phases; `run_recipe` calls them and marks the MLflow run when one fails."""

    tracker: MlflowTracker

    def setup(self) -> None: ...

    def train(self) -> LoopResult: ...

    def finish(self, result: LoopResult) -> RunOutcome: ...

    def release(self) -> None: ...


def run_recipe(recipe: Recipe) -> RunOutcome:
    """setup, train, finish; a failure (FAILED) or a prune or Ctrl-C (KILLED) is recorded on the run."""
    try:
        recipe.setup()
        return recipe.finish(recipe.train())
    except BaseException as err:
        if getattr(recipe, "tracker", None) is None:  # stopped in setup, before the store was opened
            raise
        stopped = isinstance(err, (KeyboardInterrupt, signals.Stopped, SystemExit))
        status = "KILLED" if stopped or isinstance(err, Pruned) else "FAILED"
        if recipe.tracker.run_id is not None:
            try:
                if stopped:  # on the stage run too; resumable from last.pt
                    stop = {"stop_reason": _stop_reason(err)}
                    recipe.tracker.set_tags(stop)
                    if recipe.tracker.stage_run_id is not None:
                        recipe.tracker.set_tags(stop, stage=True)
                else:
                    reason = "pruned" if isinstance(err, Pruned) else "failure"
                    recipe.tracker.set_tags({reason: f"{type(err).__name__}: {err}"[:4000]})
                recipe.tracker.end_run(status)
            except Exception as mark:  # the original error matters more (a full disk fails both): one line
                first = str(mark).strip().splitlines()[0][:300] if str(mark).strip() else type(mark).__name__
                log.warning("could not mark the MLflow run %s: %s", status, first)
        raise
    finally:
        recipe.release()


def _stop_reason(err: BaseException) -> str:
    """`stop_reason` of a run stopped from outside: a signal (preempted / interrupted), or a `sys.exit` inside
    the run, which is submitit's preemption (its USR2 handler checkpoints the job, then exits for the requeue)."""
    if isinstance(err, SystemExit):
        return "preempted" if os.environ.get("SUBMITIT_EXECUTOR") else f"exited (status {err.code})"
    return getattr(err, "reason", "interrupted")


def load_splits(c: TrainConfig) -> Splits:
    """The dataset's windows, checked against the backbone, split subject-wise (the split sizes are logged).

    `dataset.split_seed` alone decides the data and the folds: runs that differ in `seed` share them."""
    d = c.dataset
    label_fraction.check_settings(d)  # before the data is read
    inner_folds.check(c.search)
    windows = load_windows(d, seed=d.split_seed, cache_dir=Path(c.paths.cache_dir))
    windows = check_windows(windows, c.backbone.context_length, d.channels, d.nonfinite)
    splits = split_subject_wise(windows, d.n_folds, d.fold, d.split_seed, allow_shared=d.allow_shared_subjects)
    if c.search.inner_folds is not None:  # an inner-CV job of a study: the outer test subjects are dropped here
        splits = inner_folds.inner_split(splits, c.search.inner_folds, c.search.inner_fold, d.split_seed)
    splits = label_fraction.apply(splits, d)  # dataset.label_fraction / label_subjects: training subjects only
    for name, row in describe_splits(splits).items():
        log.info("%-5s split: %s", name, ", ".join(f"{k} {v}" for k, v in row.items()))
    return splits


def run_tags(c: TrainConfig, info: RunInfo, *, empty: bool, init: str) -> dict[str, str]:
    """The parent run's tags: what it trains, how it was started, and its sweep or Optuna trial."""
    tags = {
        "backbone": c.backbone.name,
        "dataset": c.dataset.name,
        "schedule": c.schedule.name,
        "unfreeze.strategy": c.unfreeze.strategy.value,
        "unfreeze.last_n": str(c.unfreeze.last_n),
        "unfreeze.empty": str(empty).lower(),
        "init": init,
        "mode_collapse": "false",
        "output_dir": str(info.output_dir),
    }
    if c.dataset.subject_from.value == "record":  # subjects may be split across folds: say so on the run
        tags["dataset.subject_from"] = "record"
    if info.sweep_id:
        tags["sweep"] = info.sweep_id
        tags["sweep.job"] = str(info.job_num)
    if info.overrides:
        tags["overrides"] = " ".join(info.overrides)
    tags.update(search_tags(c.search))  # an Optuna trial: study, trial number, state, the study's run as parent
    return tags


def open_run(tracker: MlflowTracker, c: TrainConfig, info: RunInfo, splits: Splits, tags: dict[str, str]) -> None:
    """Start the parent run and record what it starts from: params, the splits, the resolved config."""
    if splits.shared_subjects:  # a predefined split allowed to share subjects (dataset.allow_shared_subjects)
        tags = {**tags, "split.shared_subjects": str(splits.shared_subjects)}
    tracker.start_run(
        run_name(explicit=c.run_name, overrides=info.overrides, backbone=c.backbone.name, schedule=c.schedule.name),
        tags,
    )
    tracker.log_params(config_params(c))
    tracker.log_dict(describe_splits(splits), "data/splits.json")
    if splits.label_subset is not None:  # the training subjects and windows actually kept (dataset.label_fraction)
        tracker.log_metrics(splits.label_subset.metrics(), step=0)
        tracker.log_dict({"train_subjects": list(splits.label_subset.kept)}, "data/label_subjects.json")
    d = c.dataset  # the splits as MLflow datasets: name, source, digest of the windows, sizes and class balance
    tracker.log_inputs(split_inputs(splits, dataset=d.name, fold=d.fold, root=d.root, split_seed=d.split_seed))
    tracker.log_text(info.config_yaml, "config/config.yaml")


def publish_summary(tracker: MlflowTracker, summary: str) -> None:
    print(summary, flush=True)
    tracker.log_text(summary, "summary.txt")
    tracker.set_tags({"mlflow.note.content": f"```\n{summary}\n```"})  # the run page's Description


class TrainRecipe:
    """One supervised (or self-supervised) run of the schedule on one model."""

    def __init__(self, config: TrainConfig, info: RunInfo):
        self.config = config
        self.info = info
        self._held: dict[Path, int] = {}  # run directory -> the descriptor holding its lock
        self._amplitude_range: dict | None = None  # computed once, when the first checkpoint is written

    # -- setup: fail before any long work --------------------------------------------------------
    def setup(self, *, track: bool = True) -> None:
        """Everything before the first epoch; `track=False` (the stage cache plan) opens no MLflow run and
        reads no resume state."""
        c = self.config
        self.t0 = time.perf_counter()
        chronos.check_schedule(c)  # a probe-only backbone: refused here, before the data, for any trained schedule
        if c.optim.lr_find:  # before the data: an optim.lr given or swept alongside would do nothing
            lr_finder.check_overrides(self.info.overrides)
        if track:  # one live process per run directory: a second one would train the same run alongside
            self._hold_run_dir(self.info.output_dir)
        torch.manual_seed(c.seed)
        np.random.seed(c.seed)
        if c.trainer.num_threads:
            torch.set_num_threads(c.trainer.num_threads)
        # auto: multirun job j takes visible GPU j % n (joblib n_jobs=K packs K jobs over them); logged there
        self.device = pick_device(c.trainer.device, job_num=self.info.job_num)
        check_amp(c.trainer.amp, self.device)  # fp16 off CUDA, bf16 on a GPU without it: refused here
        if track:
            self.tracker = MlflowTracker.for_run(c.tracking, c.experiment_name)
        weights = locate_weights(c.backbone)  # before the data: a snapshot missing from the cache stops here
        self.splits = load_splits(c)
        self.stages = plan_stages(
            c.schedule, lr=c.optim.lr, ssl_lr=c.optim.ssl_lr, max_epochs=c.trainer.max_epochs_per_stage
        )
        if any(s.supervised for s in self.stages):  # the selection metric is one the loop logs, before training
            check_selection_metric(parse_metric(c.optimized_metric), tuple(self.splits.train.class_names))
        # random, or a checkpoint (hub id, directory, ttm-train file) whose architecture it was built from
        self.model, self.init = build_model(
            c.backbone, num_channels=c.dataset.channels, num_classes=len(self.splits.train.class_names), src=weights
        )
        self.lr_found = None
        if c.optim.lr_find:  # the found rate is optim.lr from here on: stage rates, params, cache keys follow it
            rate = lr_finder.resumed_rate(c, self.info.output_dir) if track else None  # a resume keeps its rate
            if rate is None:
                self.lr_found = lr_finder.find_lr(self.model, self.splits.train, c, self.stages[0], self.device)
                rate = self.lr_found.lr
            c = self.config = lr_finder.with_found_rate(c, rate)
            self.stages = plan_stages(
                c.schedule, lr=c.optim.lr, ssl_lr=c.optim.ssl_lr, max_epochs=c.trainer.max_epochs_per_stage
            )
        self.init_kind = self.init.kind
        self.stages, self.optim = finetune_rates(self.stages, c.optim, init=self.init_kind)
        self.resume_state = self._resume_state() if track else None
        if track and self.info.output_dir not in self._held:  # resume=<another run's directory>
            self._hold_run_dir(self.info.output_dir)
        if self.resume_state is not None:
            self.model.load_state_dict(self.resume_state["model"])
        # every stage's selection, before training: an empty or out-of-range selection stops here
        self.empty_stages = (
            []
            if not track
            else [
                s.name
                for s in self.stages
                if s.supervised and plan_stage(self.model.backbone.model, c.unfreeze, scope=s.scope, stage=s.name)[1]
            ]
        )
        self.pretrain_digest = None
        self.pretrain = self._pretrain_data() if any(s.data == "pretrain" for s in self.stages) else None
        self.cache = stage_cache.RunStages.open(
            Path(c.paths.stage_cache_dir) if c.trainer.stage_cache else None,
            self.stages,
            inputs=stage_cache.run_inputs(
                c, self.splits, pretrain_digest=self.pretrain_digest, init_tags=self.init.tags(), device=self.device
            ),
            settings=[stage_cache.stage_settings(c, self.optim, s) for s in self.stages],
        )

    def cache_plan(self) -> list[str]:
        """Per stage whether the stage cache holds it now, and who computed it (`ttm-train --cfg job`)."""
        self.setup(track=False)
        return self.cache.plan(self.stages, enabled=self.config.trainer.stage_cache)

    def _hold_run_dir(self, directory: Path) -> None:
        """Lock `<directory>/run.lock` for as long as this process lives (the kernel releases it at exit, even
        after SIGKILL); refuse when a live process holds it."""
        target = directory / "run"
        fd = try_lock(target, what=f"the run directory {directory}", fix="a run directory on a local disk")
        if fd is None:
            raise RunDirInUse(
                f"the run directory {directory} is in use by process {holder(target)}, a live ttm-train; nothing was "
                "changed. Fix: wait for it to end (or stop it: Ctrl-C or kill), then rerun the same command to resume "
                "it; or give this run its own directory (hydra.run.dir=<another dir>)."
            )
        self._held[directory] = fd

    def release(self) -> None:
        """Let go of the run directories (at the end of the run; a process that exits releases them anyway)."""
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()

    def _resume_state(self) -> dict | None:
        """The state to continue from: `resume=<dir or run id>`, or an unfinished run in this output dir."""
        found = resume.find_state(
            resume=self.config.resume,
            output_dir=self.info.output_dir,
            tracking_uri=self.config.tracking.uri,
            config=config_params(self.config),
        )
        if found is None:
            return None
        state, path = found
        self.info.output_dir = path.parent
        remove_stale_temporaries(path.parent)  # a kill inside a write of last.pt or best.pt left its temporary
        log.warning(
            "RESUMING %s at stage %r, after epoch %d (MLflow run %s)",
            path,
            state["stage_name"],
            state["epoch"],
            state["run_ids"]["parent"],
        )
        return state

    def _pretrain_data(self) -> tuple[RowView, RowView]:
        """The unlabeled corpus of `data: pretrain` stages, split by subject into train and validation."""
        c = self.config
        windows, train, val = load_pretrain_corpus(
            c.dataset, context_length=c.backbone.context_length, cache_dir=Path(c.paths.cache_dir)
        )
        if c.trainer.stage_cache:  # the corpus is part of the stage cache's key
            self.pretrain_digest = windows_digest(windows)
        return train, val

    # -- train --------------------------------------------------------------------------------------
    def train(self) -> LoopResult:
        c = self.config
        state = self.resume_state
        if state is None:
            tags = {**run_tags(c, self.info, empty=bool(self.empty_stages), init=self.init_kind), **self.init.tags()}
            open_run(self.tracker, c, self.info, self.splits, tags)
            if self.lr_found is not None:  # param optim.lr_found, tag optim.lr_source=finder, lr_finder/curve.*
                self.lr_found.record(self.tracker)
        if self.empty_stages:
            log.warning(
                "stages %s unfreeze no backbone block (unfreeze.on_empty=warn): the run is tagged unfreeze.empty=true",
                self.empty_stages,
            )
        self._build_loops()
        result, epoch, first = LoopResult(), 0, 0
        if state is not None:
            resume.continue_tracking(self.tracker, state)
            result, epoch, first = state["result"], state["epoch"], state["stage_index"]
            self.trainer.best_state = state["best_state"]
            self.precision.load_state_dict(state.get("scaler"))
            resume.restore_rng(state["rng"], self._generators())
        else:  # before the first step: a stop or a kill from here on resumes into these MLflow runs
            self._checkpoint(EpochEnd(0, 0, None, None, {}), stage_index=0, stage=self.stages[0], result=result)
        signals.check()  # a signal during setup or that first checkpoint stops here, resumable
        try:
            for index in range(first, len(self.stages)):
                within = state if state is not None and index == first and state["stage_epoch"] > 0 else None
                epoch = self._run_stage(index, result, epoch, within)
        except Pruned:  # a pruned trial is over: its state must not be resumed as if it had been killed
            resume.mark_finished(
                self.info.output_dir / resume.STATE_FILE,
                config=config_params(c),
                run_id=self.tracker.run_id,
                pruned=True,
            )
            raise
        if self.cache.entries is not None:
            self.tracker.set_tags(self.cache.tags())
        return result

    def _build_loops(self) -> None:
        c = self.config
        # one Precision for both loops: the fp16 scaler's state carries across stages and into last.pt
        self.precision = Precision(self.device, c.trainer.amp)
        shared = {
            "optim": self.optim,
            "trainer": c.trainer,
            "device": self.device,
            "seed": c.seed,
            "tracker": self.tracker,
            "precision": self.precision,
        }
        self.trainer = Trainer(
            self.model,
            self.splits.train,
            self.splits.val,
            unfreeze=c.unfreeze,
            selection=parse_metric(c.optimized_metric),
            epoch_hooks=epoch_hooks(
                c.search,
                c.optimized_metric,
                self.tracker,
                dataset_digest=stage_cache.digest(
                    [windows_digest(x) for x in (self.splits.train, self.splits.val, self.splits.test)]
                ),
            ),
            **shared,
        )
        self.ssl_runner = SSLRunner(self.model.backbone, **shared)

    def _run_stage(self, index: int, result: LoopResult, epoch: int, within: dict | None) -> int:
        """One stage (trained, or taken from the stage cache), its checkpoint file, and (between stages) a
        resume state that starts the next one."""
        key = self.cache.key(index) if within is None else None
        if key is None:
            epoch = self._train_stage(index, result, epoch, within)
        else:
            with self.cache.entries.claim(key, self.stages[index].name) as entry:
                if entry is not None:
                    epoch = self._reuse_stage(index, result, entry)
                else:
                    epoch = self._train_stage(index, result, epoch, None, record=True)
                    self._store_stage(index, result, epoch, key)
        self._after_stage(index, result, epoch)
        return epoch

    def _train_stage(
        self, index: int, result: LoopResult, epoch: int, within: dict | None, *, record: bool = False
    ) -> int:
        """Train the stage; `record`: keep its MLflow calls (`tracker.journal`) for the stage cache."""
        stage = self.stages[index]

        def on_end(end: EpochEnd) -> None:
            self._checkpoint(end, stage_index=index, stage=stage, result=result)

        self.tracker.journal = [] if record else None
        if stage.supervised:
            return self.trainer.run_stage(stage, result, epoch, resume=within, on_epoch_end=on_end)
        return self._ssl_stage(stage, result, epoch, within, on_end)

    def _store_stage(self, index: int, result: LoopResult, epoch: int, key: str) -> None:
        """Put the stage just trained in the cache: the state the next stage starts from and its MLflow record."""
        journal, self.tracker.journal = self.tracker.journal, None
        stage = self.stages[index]
        state = {
            "model": self.model.state_dict(),
            "epoch": epoch,
            "result": result,
            "best_state": self.trainer.best_state,
            "scaler": self.precision.state_dict(),
            "rng": resume.rng_state(self._generators()),
        }
        source = {
            "experiment": self.tracker.experiment_id,
            "parent": self.tracker.run_id,
            "stage": self.tracker.last_stage_run_id,
        }
        try:
            self.cache.entries.store(stage_cache.Entry(key, stage.name, state, journal, source))
        except (OSError, StoreError) as err:  # a full disk: this run is fine, later runs recompute the stage
            log.warning(
                "[%s] could not store the stage in the cache (%s); later runs will train it again", stage.name, err
            )
            self.tracker.set_tags({"stage_cache.store_failed": f"{stage.name}: {err}"[:500]})
            return
        self.cache.computed.append(stage.name)

    def _reuse_stage(self, index: int, result: LoopResult, entry: stage_cache.Entry) -> int:
        """Continue from a stored stage: its end state, its MLflow record replayed in this run (tagged
        `stage_cache=reused`, with the run that computed it), and the study's pruning hooks for its epochs."""
        stage, state, src = self.stages[index], entry.state, entry.source
        self.model.load_state_dict(state["model"])
        vars(result).update(vars(state["result"]))
        self.trainer.best_state = state["best_state"]
        self.precision.load_state_dict(state["scaler"])
        resume.restore_rng(state["rng"], self._generators())
        link = f"#/experiments/{src['experiment']}/runs/{src['stage']}?workflowType=machine_learning"
        self.tracker.replay(
            entry.journal,
            {
                "stage_cache": "reused",
                "stage_cache.key": entry.key,
                "stage_cache.source_run": str(src["parent"]),
                "stage_cache.source_stage_run": str(src["stage"]),
                "stage_cache.source_link": link,
            },
        )
        for record in (r for r in result.history if r.stage == stage.name):
            for hook in self.trainer.epoch_hooks:  # an Optuna trial sees the epochs as if it had trained them
                hook(record)
        self.cache.reused.append(stage.name)
        log.info(
            "[%s] REUSED from the stage cache (computed by run %s; %s): epochs %d, the same end state",
            stage.name,
            src["parent"],
            self.cache.entries.path(entry.key),
            stage.epochs,
        )
        return state["epoch"]

    def _after_stage(self, index: int, result: LoopResult, epoch: int) -> None:
        stage = self.stages[index]
        save_classifier(
            self.info.output_dir / f"stage-{stage.name}.pt",
            self.model,
            stage.name,
            self.splits.train.class_names,
            window_s=self.config.dataset.duration_s,
            amplitude=self._amplitude(),
        )
        if index + 1 < len(self.stages):  # between stages: the next one starts fresh on resume
            self._checkpoint(
                EpochEnd(0, epoch, None, None, {}), stage_index=index + 1, stage=self.stages[index + 1], result=result
            )

    def _amplitude(self) -> dict:
        """The training windows' range of location and scale, which a checkpoint records (`models/amplitude.py`)."""
        if self._amplitude_range is None:
            self._amplitude_range = AmplitudeRange.of(self.splits.train.signals).as_dict()
        return self._amplitude_range

    def _checkpoint(self, end: EpochEnd, *, stage_index: int, stage: StagePlan, result: LoopResult) -> None:
        """After every epoch, before its metrics are logged: everything needed to continue from here."""
        end = replace(end, extra={**end.extra, "scaler": self.precision.state_dict()})  # fp16: the loss scale
        resume.save_epoch(
            self.info.output_dir / resume.STATE_FILE,
            end,
            config=config_params(self.config),
            stage_index=stage_index,
            stage_name=stage.name,
            model=self.model,
            result=result,
            best_state=self.trainer.best_state,
            generators=self._generators(),
            run_ids={"parent": self.tracker.run_id, "stage": self.tracker.stage_run_id},
        )

    def _generators(self) -> dict[str, torch.Generator]:
        return {"trainer": self.trainer.generator, "ssl": self.ssl_runner.generator}

    def _ssl_stage(self, stage: StagePlan, result: LoopResult, epoch: int, within: dict | None, on_end) -> int:
        """A self-supervised stage in its own nested run, then a linear probe on the labeled data."""
        train_x, val_x = (
            self.pretrain if stage.data == "pretrain" else (self.splits.train.signals, self.splits.val.signals)
        )
        if within is None:
            self.tracker.start_stage(stage.name, {"scope": "full", "kind": stage.kind, "data": stage.data})
        epoch, history = self.ssl_runner.run_stage(stage, train_x, val_x, epoch, resume=within, on_epoch_end=on_end)
        probe = linear_probe_auroc(
            self.model.backbone,
            self.splits.train,
            self.splits.val,
            batch_size=self.config.optim.eval_batch_size,
            device=self.device,
        )
        self.tracker.log_metrics({"probe/val_auroc": probe}, step=epoch)
        log.info("[%s] linear probe on frozen features: val AUROC %.3f", stage.name, probe)
        self.tracker.end_stage()
        result.ssl.append({"stage": stage.name, "kind": stage.kind, "probe_val_auroc": probe, **history[-1]})
        return epoch

    # -- finish: test the best checkpoint, record, summarise -----------------------------------------
    def finish(self, result: LoopResult) -> RunOutcome:
        c = self.config
        if not result.history:  # a self-supervised schedule (pretrain): its product is the foundation checkpoint
            return self._finish_pretrain(result)
        self.trainer.restore_best()
        ckpt = self.info.output_dir / "best.pt"
        save_classifier(
            ckpt,
            self.model,
            result.best_stage,
            self.splits.train.class_names,
            window_s=c.dataset.duration_s,
            amplitude=self._amplitude(),
        )
        test, logits = self.trainer.evaluate(*self.trainer.tensors(self.splits.test))
        step = result.history[-1].epoch
        test = test_metrics(self.splits.test, test, softmax(logits), seed=c.seed)
        self.tracker.log_artifact(ckpt)
        model_id = record_model(self.tracker, c, checkpoint=ckpt, split=self.splits.test, test=test)
        test, test_collapsed = record_test(
            self.tracker,
            self.splits.test,
            test,
            softmax(logits),
            step=step,
            seed=c.seed,
            collapse_threshold=c.trainer.collapse_threshold,
            model_id=model_id,
        )
        self._record_best(result, test_collapsed, step=step, model_id=model_id)
        if test_collapsed:
            log.warning(
                "MODE COLLAPSE on the test set: accuracy of %s below %.2f", test_collapsed, c.trainer.collapse_threshold
            )
        summary = summary_table(result, test, self.splits.test.class_names, metric=parse_metric(c.optimized_metric))
        publish_summary(self.tracker, summary)
        (self.info.output_dir / "summary.txt").write_text(summary + "\n")
        objective = objective_value(result, c.optimized_metric)
        self._end_run(objective)
        log.info(
            "run %s finished in %.1f s; best checkpoint %s", self.tracker.run_id, time.perf_counter() - self.t0, ckpt
        )
        return RunOutcome(objective, test, self.tracker.run_id, result.best_epoch, result.best_stage)

    def _record_best(self, result: LoopResult, test_collapsed: list[str], *, step: int, model_id: str) -> None:
        """The selected checkpoint's numbers, and collapse: `mode_collapse` describes the selected checkpoint
        (its validation epoch, its test result); the collapsed epochs are counted apart."""
        metric = parse_metric(self.config.optimized_metric)
        best = next(r for r in result.history if r.epoch == result.best_epoch)
        self.tracker.log_metrics({"best/epoch": result.best_epoch}, step=step)
        self.tracker.log_metrics(  # the model's numbers on the validation split it was selected on
            {
                "best/val_auroc": result.best_val_auroc,
                f"best/{metric.split}_{metric.key}": result.best_value,
                "val/collapsed_epochs": len(result.collapse_epochs),
            },
            step=step,
            model_id=model_id,
            split="val",
        )
        self.tracker.set_tags(
            {
                "mode_collapse": str(bool(best.collapsed) or bool(test_collapsed)).lower(),
                "mode_collapse.best_val_classes": ",".join(best.collapsed) or "none",
                "mode_collapse.val_epochs": ",".join(map(str, result.collapse_epochs)) or "none",
                "mode_collapse.test_classes": ",".join(test_collapsed) or "none",
                "best.stage": result.best_stage,
            }
        )

    def _end_run(self, objective: float) -> None:
        resume.mark_finished(
            self.info.output_dir / resume.STATE_FILE,
            config=config_params(self.config),
            run_id=self.tracker.run_id,
            objective=objective,
        )
        self.tracker.end_run("FINISHED")

    def _finish_pretrain(self, result: LoopResult) -> RunOutcome:
        last = result.ssl[-1]
        foundation = self.info.output_dir / "foundation.pt"
        save_classifier(foundation, self.model, last["stage"], self.splits.train.class_names)
        self.tracker.log_artifact(foundation)
        self.tracker.set_tags({"foundation": str(foundation.resolve())})
        publish_summary(self.tracker, pretrain_summary(result, foundation))
        self._end_run(last["probe_val_auroc"])
        return RunOutcome(last["probe_val_auroc"], {}, self.tracker.run_id, last["epoch"], last["stage"])
