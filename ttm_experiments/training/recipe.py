"""One supervised run: setup (check everything), train (the schedule), finish (test, record, summarise).

Everything that can be wrong with the input is checked in `setup`, before the first epoch: the tracking
store, the data, the checkpoint, and every stage's unfreeze selection.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ttm_experiments.config import spec as specs
from ttm_experiments.config.schema import TrainConfig
from ttm_experiments.errors import ConfigError, Pruned
from ttm_experiments.data.prepare import (
    RowView, Splits, check_windows, describe_splits, load_windows, split_subject_wise,
)
from ttm_experiments.metrics import bootstrap_auroc_ci, collapsed_classes, confusion, softmax
from ttm_experiments.models.backbones import build_classifier
from ttm_experiments.models.checkpoint import load_backbone_weights, save_classifier
from ttm_experiments.search.pruning import epoch_hooks, search_tags
from ttm_experiments.tracking import MlflowTracker, flatten
from ttm_experiments.training import resume
from ttm_experiments.training.loop import LoopResult, StagePlan, Trainer
from ttm_experiments.training.ssl import SSLRunner, linear_probe_auroc
from ttm_experiments.unfreeze import plan_stage

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


class TrainRecipe:
    def __init__(self, config: TrainConfig, info: RunInfo):
        self.config = config
        self.info = info

    # -- setup: fail before any long work --------------------------------------------------------
    def setup(self) -> None:
        c = self.config
        self.t0 = time.perf_counter()
        torch.manual_seed(c.seed)
        np.random.seed(c.seed)
        if c.trainer.num_threads:
            torch.set_num_threads(c.trainer.num_threads)
        self.tracker = MlflowTracker(c.tracking.uri, c.experiment_name)
        self.splits = self._data()
        self.rule = specs.block_rule(c)
        self.stages = specs.stage_plans(c)
        self.model = build_classifier(
            specs.backbone_spec(c), len(self.splits.train.class_names), c.backbone.head_hidden,
            c.backbone.head_dropout, c.backbone.scale_features,
        )
        self.init_kind = "random"
        if c.backbone.pretrained_path:
            self.init_kind = load_backbone_weights(self.model.backbone, c.backbone.pretrained_path)
        self.resume_state = self._resume_state()
        if self.resume_state is not None:
            self.model.load_state_dict(self.resume_state["model"])
        # every stage's selection, before training: an empty or out-of-range selection stops here
        self.empty_stages = [
            s.name for s in self.stages if s.supervised
            and plan_stage(self.model.backbone.model, self.rule, s.scope, s.last_n, c.unfreeze.on_empty.value, s.name)[1]
        ]
        self.pretrain = self._pretrain_data() if any(s.data == "pretrain" for s in self.stages) else None

    def _data(self) -> Splits:
        c = self.config
        ds = specs.dataset_spec(c)
        windows = load_windows(ds, Path(c.paths.cache_dir))
        windows = check_windows(windows, c.backbone.context_length, c.dataset.channels, ds.nonfinite)
        splits = split_subject_wise(windows, ds.n_folds, ds.fold, ds.seed)
        for name, row in describe_splits(splits).items():
            log.info("%-5s split: %s", name, ", ".join(f"{k} {v}" for k, v in row.items()))
        return splits

    def _flat_config(self) -> dict:
        return flatten(asdict_config(self.config))

    def _resume_state(self) -> dict | None:
        """The state to continue from: `resume=<dir or run id>`, or an unfinished run in this output dir."""
        c = self.config
        if c.resume:
            path = resume.locate(c.resume, c.tracking.uri)
        elif (self.info.output_dir / resume.STATE_FILE).is_file():
            path = self.info.output_dir / resume.STATE_FILE
        else:
            return None
        state = resume.load_state(path)
        if state.get("finished"):
            raise ConfigError(f"the run in {path.parent} already finished (MLflow run {state['run_ids']['parent']}); "
                              "nothing to resume. Start a new run without resume=.")
        resume.check_config(state, self._flat_config(), path)
        self.info.output_dir = path.parent
        log.warning("RESUMING %s at stage %r, after epoch %d (MLflow run %s)", path, state["stage_name"],
                    state["epoch"], state["run_ids"]["parent"])
        return state

    def _checkpoint(self, stage_index: int, stage: StagePlan, result: LoopResult, stage_epoch: int, optimizer,
                    scheduler, epoch: int, metrics: dict[str, float], extra: dict) -> None:
        """After every epoch, before its metrics are logged: everything needed to continue from here."""
        resume.save_state(self.info.output_dir / resume.STATE_FILE, {
            "config": self._flat_config(),
            "stage_index": stage_index,
            "stage_name": stage.name,
            "stage_epoch": stage_epoch,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": resume.rng_state(self._generators()),
            "result": result,
            "best_state": self.trainer.best_state,
            "run_ids": {"parent": self.tracker.run_id, "stage": self.tracker.stage_run_id},
            "pending": {"epoch": epoch, "metrics": metrics},
            **extra,
        })

    def _generators(self) -> dict[str, torch.Generator]:
        return {"trainer": self.trainer.generator, "ssl": self.ssl_runner.generator}

    def _continue_tracking(self, state: dict) -> None:
        """Re-attach the MLflow runs of the killed process and log the epoch it saved but did not log."""
        self.tracker.attach(state["run_ids"]["parent"], state["run_ids"]["stage"])
        self.tracker.set_tags({"resumed": "true"})
        pending = state.get("pending")
        if pending and pending["metrics"]:
            key = next(iter(pending["metrics"]))
            if not self.tracker.has_metric_step(key, pending["epoch"]):
                self.tracker.log_metrics(pending["metrics"], step=pending["epoch"])

    def _pretrain_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The unlabeled corpus of `data: pretrain` stages, split by subject into train and validation (90/10)."""
        c = self.config
        ds = specs.pretrain_spec(c)
        windows = load_windows(ds, Path(c.paths.cache_dir))
        windows = check_windows(windows, c.backbone.context_length, c.dataset.channels, ds.nonfinite)
        subjects = np.unique(windows.subjects)
        rng = np.random.default_rng(c.seed)
        held_out = rng.choice(subjects, size=max(1, len(subjects) // 10), replace=False)
        is_val = np.isin(windows.subjects, held_out)
        log.info("pretraining corpus %s: %d windows of %d subjects (%d held out for validation)", ds.name,
                 len(windows), len(subjects), int(is_val.sum()))
        # views, not copies: a large memory-mapped corpus stays on disk and is read batch by batch
        return RowView(windows.signals, np.flatnonzero(~is_val)), RowView(windows.signals, np.flatnonzero(is_val))

    def _tags(self) -> dict[str, str]:
        c = self.config
        tags = {
            "backbone": c.backbone.name,
            "dataset": c.dataset.name,
            "schedule": c.schedule.name,
            "unfreeze.strategy": c.unfreeze.strategy.value,
            "unfreeze.last_n": str(c.unfreeze.last_n),
            "unfreeze.empty": str(bool(self.empty_stages)).lower(),
            "init": self.init_kind,
            "mode_collapse": "false",
            "output_dir": str(self.info.output_dir),
        }
        if self.info.sweep_id:
            tags["sweep"] = self.info.sweep_id
            tags["sweep.job"] = str(self.info.job_num)
        if self.info.overrides:
            tags["overrides"] = " ".join(self.info.overrides)
        tags.update(search_tags(c.search))  # an Optuna trial: study, trial number, state, the study's run as parent
        return tags

    # -- train --------------------------------------------------------------------------------------
    def train(self) -> LoopResult:
        c = self.config
        state = self.resume_state
        if state is None:
            self.tracker.start_run(c.run_name, self._tags())
            self.tracker.log_params(self._flat_config())
            self.tracker.log_dict(describe_splits(self.splits), "data/splits.json")
            self.tracker.log_text(self.info.config_yaml, "config/config.yaml")
        if self.empty_stages:
            log.warning("stages %s unfreeze no backbone block (unfreeze.on_empty=warn): the run is tagged "
                        "unfreeze.empty=true", self.empty_stages)
        settings = specs.loop_settings(c)
        self.trainer = Trainer(self.model, self.splits.train, self.splits.val, settings, self.rule,
                               c.unfreeze.on_empty.value, self.tracker,
                               epoch_hooks=epoch_hooks(c.search, c.optimized_metric, self.tracker))
        self.ssl_runner = SSLRunner(self.model.backbone, settings, self.tracker)
        result, epoch, first = LoopResult(), 0, 0
        if state is not None:
            self._continue_tracking(state)
            result, epoch, first = state["result"], state["epoch"], state["stage_index"]
            self.trainer.best_state = state["best_state"]
            resume.restore_rng(state["rng"], self._generators())
        for index in range(first, len(self.stages)):
            stage = self.stages[index]
            within = state if state is not None and index == first and state["stage_epoch"] > 0 else None
            on_end = functools.partial(self._checkpoint, index, stage, result)
            if stage.supervised:
                epoch = self.trainer.run_stage(stage, result, epoch, within, on_end)
            else:
                epoch = self._ssl_stage(stage, result, epoch, within, on_end)
            save_classifier(self.info.output_dir / f"stage-{stage.name}.pt", self.model, stage.name,
                            self.splits.train.class_names)
            if index + 1 < len(self.stages):  # between stages: the next one starts fresh on resume
                self._checkpoint(index + 1, self.stages[index + 1], result, 0, None, None, epoch, {}, {})
        return result

    def _ssl_stage(self, stage: StagePlan, result: LoopResult, epoch: int, within: dict | None,
                   on_end) -> int:
        """A self-supervised stage in its own nested run, then a linear probe on the labeled data."""
        train_x, val_x = self.pretrain if stage.data == "pretrain" else (self.splits.train.signals,
                                                                           self.splits.val.signals)
        if within is None:
            self.tracker.start_stage(stage.name, {"scope": "full", "kind": stage.kind, "data": stage.data})
        epoch, history = self.ssl_runner.run_stage(stage.name, stage.kind, stage.ssl, stage.epochs, stage.head_lr,
                                                   stage.backbone_lr, train_x, val_x, epoch, within, on_end)
        probe = self._probe()
        self.tracker.log_metrics({"probe/val_auroc": probe}, step=epoch)
        log.info("[%s] linear probe on frozen features: val AUROC %.3f", stage.name, probe)
        self.tracker.end_stage()
        result.ssl.append({"stage": stage.name, "kind": stage.kind, "probe_val_auroc": probe, **history[-1]})
        return epoch

    def _probe(self) -> float:
        s = self.trainer.settings
        return linear_probe_auroc(self.model.backbone, self.splits.train.signals, self.splits.train.labels,
                                  self.splits.val.signals, self.splits.val.labels, s.eval_batch_size, s.device)

    # -- finish: test the best checkpoint, record, summarise -----------------------------------------
    def finish(self, result: LoopResult) -> RunOutcome:
        c = self.config
        if not result.history:  # a self-supervised schedule (pretrain): its product is the foundation checkpoint
            return self._finish_pretrain(result)
        self.trainer.restore_best()
        ckpt = self.info.output_dir / "best.pt"
        save_classifier(ckpt, self.model, result.best_stage, self.splits.train.class_names)
        test, logits = self.trainer.evaluate(*self.trainer.tensors(self.splits.test))
        names = self.splits.test.class_names
        test, test_collapsed = self._record_test(test, softmax(logits), step=result.history[-1].epoch)
        self.tracker.log_metrics({"best/epoch": result.best_epoch, "best/val_auroc": result.best_val_auroc},
                                 step=result.history[-1].epoch)
        self.tracker.log_artifact(ckpt)
        collapse = bool(result.collapse_epochs) or bool(test_collapsed)
        self.tracker.set_tags({
            "mode_collapse": str(collapse).lower(),
            "mode_collapse.val_epochs": ",".join(map(str, result.collapse_epochs)) or "none",
            "mode_collapse.test_classes": ",".join(test_collapsed) or "none",
            "best.stage": result.best_stage,
        })
        if test_collapsed:
            log.warning("MODE COLLAPSE on the test set: accuracy of %s below %.2f", test_collapsed,
                        c.trainer.collapse_threshold)
        summary = summary_table(result, test, names)
        print(summary, flush=True)
        self.tracker.log_text(summary, "summary.txt")
        (self.info.output_dir / "summary.txt").write_text(summary + "\n")
        self._mark_finished()
        self.tracker.end_run("FINISHED")
        log.info("run %s finished in %.1f s; best checkpoint %s", self.tracker.run_id,
                 time.perf_counter() - self.t0, ckpt)
        return RunOutcome(objective_value(result, c.optimized_metric), test, self.tracker.run_id, result.best_epoch,
                          result.best_stage)

    def _mark_finished(self) -> None:
        """A finished run keeps no resumable state (its results are in MLflow), only a marker."""
        resume.save_state(self.info.output_dir / resume.STATE_FILE, {
            "finished": True, "config": self._flat_config(), "run_ids": {"parent": self.tracker.run_id}})

    def _record_test(self, test: dict[str, float], probs: np.ndarray, step: int) -> tuple[dict[str, float], list[str]]:
        """Log test metrics (with the subject-wise bootstrap interval) and the confusion matrix."""
        c = self.config
        names = self.splits.test.class_names
        interval = bootstrap_auroc_ci(self.splits.test.labels, probs, self.splits.test.subjects, seed=c.seed)
        if interval is not None:
            test["auroc_ci_low"], test["auroc_ci_high"] = interval
        self.tracker.log_metrics({f"test/{k}": v for k, v in test.items()}, step=step)
        cm = confusion(self.splits.test.labels, probs, len(names))
        self.tracker.log_dict({"classes": list(names), "matrix": cm.tolist(), "rows": "true", "cols": "predicted"},
                              "test/confusion_matrix.json")
        self.tracker.log_figure(confusion_figure(cm, names), "test/confusion_matrix.png")
        return test, collapsed_classes(test, names, c.trainer.collapse_threshold)

    def _finish_pretrain(self, result: LoopResult) -> RunOutcome:
        foundation = self.info.output_dir / "foundation.pt"
        save_classifier(foundation, self.model, result.ssl[-1]["stage"], self.splits.train.class_names)
        self.tracker.log_artifact(foundation)
        self.tracker.set_tags({"foundation": str(foundation.resolve())})
        summary = "\n".join(
            [f"SELF-SUPERVISED STAGES (foundation checkpoint: {foundation})"]
            + [f"  {r['stage']:12s} val ssl_loss {r['val']['ssl_loss']:.4f}  masked {r['val']['ssl_masked']:.4f} "
               f"(predicting zeros {r['val']['ssl_zero_baseline']:.4f})  linear-probe val AUROC "
               f"{r['probe_val_auroc']:.3f}" for r in result.ssl]
            + [f"fine-tune from it: ttm-train backbone.pretrained_path={foundation.resolve()}"]
        )
        print(summary, flush=True)
        self.tracker.log_text(summary, "summary.txt")
        self._mark_finished()
        self.tracker.end_run("FINISHED")
        return RunOutcome(result.ssl[-1]["probe_val_auroc"], {}, self.tracker.run_id, result.ssl[-1]["epoch"],
                          result.ssl[-1]["stage"])

    def run(self) -> RunOutcome:
        self.setup()
        try:
            result = self.train()
            return self.finish(result)
        except BaseException as err:
            status = "KILLED" if isinstance(err, (KeyboardInterrupt, Pruned)) else "FAILED"
            if self.tracker.run_id is not None:
                try:
                    reason = "pruned" if isinstance(err, Pruned) else "failure"
                    self.tracker.set_tags({reason: f"{type(err).__name__}: {err}"[:4000]})
                    self.tracker.end_run(status)
                except Exception:  # the original error matters more than a tracking hiccup
                    log.exception("could not mark the MLflow run %s", status)
            raise


def objective_value(result: LoopResult, metric: str) -> float:
    """`metric` (e.g. `val/auroc`) at the best epoch: what sweeps and Optuna optimise."""
    split, _, key = metric.partition("/")
    if split not in ("train", "val"):
        raise ConfigError(f"optimized_metric={metric!r} must be a per-epoch metric such as 'val/auroc'")
    best = next(r for r in result.history if r.epoch == result.best_epoch)
    values = best.val if split == "val" else best.train
    if key not in values:
        raise ConfigError(f"optimized_metric={metric!r} is not logged; per-epoch metrics are {sorted(values)}")
    return float(values[key])


def asdict_config(c: TrainConfig) -> dict:
    """The typed config as plain data (enums as their values), for MLflow params."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return getattr(value, "value", value)

    return plain(asdict(c))


def confusion_figure(cm: np.ndarray, names: tuple[str, ...]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2 + 0.4 * len(names), 3 + 0.4 * len(names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    plt.close(fig)
    return fig


def summary_table(result: LoopResult, test: dict[str, float], names: tuple[str, ...]) -> str:
    """Per stage: the last epoch's and the stage's best validation numbers; then the test row."""
    cols = ["auroc", "balanced_acc"] + [f"acc/{c}" for c in names]
    header = f"{'':24s}" + "".join(f"{c:>14s}" for c in cols)
    lines = ["", "SUMMARY (validation per stage, test on the best checkpoint)", header]
    for report in result.reports:
        epochs = [r for r in result.history if r.stage == report.stage]
        best = max(epochs, key=lambda r: r.val.get("auroc", -1))
        label = f"val {report.stage} (ep {best.epoch})"
        lines.append(f"{label:24s}" + "".join(f"{best.val.get(c, float('nan')):14.3f}" for c in cols))
    lines.append(f"{'test (best: ' + result.best_stage + ' ep ' + str(result.best_epoch) + ')':24s}"
                 + "".join(f"{test.get(c, float('nan')):14.3f}" for c in cols))
    trainable = ", ".join(f"{r.stage} {r.trainable_params:,}" for r in result.reports)
    lines.append(f"trainable parameters per stage: {trainable}")
    return "\n".join(lines)


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))


class BaselineRecipe(TrainRecipe):
    """A classical baseline (`backbone=baseline_sqi` / `baseline_site`) on the same folds, logged like a run:
    train and val metrics at step 1, test metrics with their interval, the same tags."""

    def setup(self) -> None:
        c = self.config
        self.t0 = time.perf_counter()
        self.tracker = MlflowTracker(c.tracking.uri, c.experiment_name)
        self.splits = self._data()
        self.empty_stages, self.init_kind = [], "none"

    def train(self) -> LoopResult:
        from ttm_experiments import baselines
        from ttm_experiments.metrics import classification_metrics

        c = self.config
        self.tracker.start_run(c.run_name, {**self._tags(), "model": c.backbone.name})
        self.tracker.log_params(flatten(asdict_config(c)))
        self.tracker.log_dict(describe_splits(self.splits), "data/splits.json")
        self.tracker.log_text(self.info.config_yaml, "config/config.yaml")
        self.tracker.start_stage("fit", {"kind": "baseline"})
        log.info("fitting %s (logistic regression on %s features)", c.backbone.name, c.backbone.kind.value)
        self.probs = dict(zip(("train", "val", "test"), baselines.fit_predict(
            c.backbone.kind.value, self.splits.train, [self.splits.train, self.splits.val, self.splits.test], c.seed)))
        result = LoopResult(best_epoch=1, best_stage="fit")
        record = {}
        for split in ("train", "val"):
            part = getattr(self.splits, split)
            record[split] = {"loss": _log_loss(part.labels, self.probs[split]),
                             **classification_metrics(part.labels, self.probs[split], part.class_names)}
        from ttm_experiments.training.loop import EpochRecord

        result.history.append(EpochRecord("fit", 1, record["train"], record["val"], []))
        result.best_val_auroc = record["val"].get("auroc", float("nan"))
        self.tracker.log_metrics({f"{s}/{k}": v for s in ("train", "val") for k, v in record[s].items()}, step=1)
        self.tracker.end_stage()
        return result

    def finish(self, result: LoopResult) -> RunOutcome:
        from ttm_experiments.metrics import classification_metrics

        c = self.config
        test_part = self.splits.test
        test = {"loss": _log_loss(test_part.labels, self.probs["test"]),
                **classification_metrics(test_part.labels, self.probs["test"], test_part.class_names)}
        test, test_collapsed = self._record_test(test, self.probs["test"], step=1)
        self.tracker.set_tags({"mode_collapse": str(bool(test_collapsed)).lower()})
        cols = ["auroc", "auroc_ci_low", "auroc_ci_high", "balanced_acc"] + [f"acc/{n}" for n in test_part.class_names]
        summary = "\n".join([f"BASELINE {c.backbone.name}", "".join(f"{k:>14s}" for k in ["split"] + cols)] + [
            f"{split:>14s}" + "".join(f"{values.get(k, float('nan')):14.3f}" for k in cols)
            for split, values in (("val", result.history[0].val), ("test", test))])
        print(summary, flush=True)
        self.tracker.log_text(summary, "summary.txt")
        self.tracker.end_run("FINISHED")
        return RunOutcome(objective_value(result, c.optimized_metric), test, self.tracker.run_id, 1, "fit")


def _log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(labels, probs, labels=list(range(probs.shape[1]))))


BASELINE_KINDS = ("sqi", "site")


def recipe_for(config: TrainConfig, info: RunInfo) -> TrainRecipe:
    """The recipe a config asks for: a baseline when the backbone is one, else the training recipe."""
    return BaselineRecipe(config, info) if config.backbone.kind.value in BASELINE_KINDS else TrainRecipe(config, info)
