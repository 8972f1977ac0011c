"""The baseline recipe: a classical model (`backbone=baseline_sqi` / `baseline_site`) on the same folds,
logged like a training run: train and val metrics at step 1, test metrics with their interval, the same tags."""

from __future__ import annotations

import logging

import numpy as np

from ttm_experiments.config.schema import TrainConfig
from ttm_experiments.data.base import WindowSet
from ttm_experiments.metrics.classification import classification_metrics
from ttm_experiments.tracking.mlflow_tracker import MlflowTracker
from ttm_experiments.training.loop import EpochRecord, LoopResult
from ttm_experiments.training.recipe import RunInfo, RunOutcome, load_splits, open_run, publish_summary, run_tags
from ttm_experiments.training.record import baseline_summary, objective_value, record_test

log = logging.getLogger(__name__)

BASELINE_KINDS = ("sqi", "site")


class BaselineRecipe:
    def __init__(self, config: TrainConfig, info: RunInfo):
        self.config = config
        self.info = info

    def release(self) -> None:
        """A baseline holds nothing between its phases."""

    def setup(self) -> None:
        c = self.config
        self.tracker = MlflowTracker.for_run(c.tracking, c.experiment_name)
        self.splits = load_splits(c)

    def train(self) -> LoopResult:
        from ttm_experiments.models import baselines

        c = self.config
        tags = {**run_tags(c, self.info, empty=False, init="none"), "model": c.backbone.name}
        open_run(self.tracker, c, self.info, self.splits, tags)
        self.tracker.start_stage("fit", {"kind": "baseline"})
        log.info("fitting %s (logistic regression on %s features)", c.backbone.name, c.backbone.kind.value)
        parts = (self.splits.train, self.splits.val, self.splits.test)
        probs, failed = baselines.fit_predict(c.backbone.kind.value, self.splits.train, list(parts), c.seed)
        self.probs = dict(zip(("train", "val", "test"), probs))
        # windows whose SQIs failed (scored the worst quality): counted, never silent; past 5 % the run stops
        self.tracker.log_metrics({"sqi/failed_windows": failed}, step=1)
        self.tracker.set_tags({"sqi.failed_windows": str(failed)})
        record = {split: _metrics(getattr(self.splits, split), self.probs[split]) for split in ("train", "val")}
        result = LoopResult(best_epoch=1, best_stage="fit")
        result.history.append(EpochRecord("fit", 1, record["train"], record["val"], []))
        result.best_val_auroc = record["val"].get("auroc", float("nan"))
        self.tracker.log_metrics({f"{s}/{k}": v for s in ("train", "val") for k, v in record[s].items()}, step=1)
        self.tracker.end_stage()
        return result

    def finish(self, result: LoopResult) -> RunOutcome:
        c = self.config
        part = self.splits.test
        test, test_collapsed = record_test(
            self.tracker,
            part,
            _metrics(part, self.probs["test"]),
            self.probs["test"],
            step=1,
            seed=c.seed,
            collapse_threshold=c.trainer.collapse_threshold,
        )
        self.tracker.set_tags({"mode_collapse": str(bool(test_collapsed)).lower()})
        publish_summary(self.tracker, baseline_summary(c.backbone.name, result.history[0].val, test, part.class_names))
        self.tracker.end_run("FINISHED")
        return RunOutcome(objective_value(result, c.optimized_metric), test, self.tracker.run_id, 1, "fit")


def _metrics(part: WindowSet, probs: np.ndarray) -> dict[str, float]:
    """The loss (log loss: the model has no training loss of its own) and the classification metrics."""
    from sklearn.metrics import log_loss

    loss = float(log_loss(part.labels, probs, labels=list(range(probs.shape[1]))))
    return {"loss": loss, **classification_metrics(part.labels, probs, part.class_names)}
