"""Per-epoch pruning inside a training job, whatever launched it.

The Optuna sweeper gives each job its trial as overrides of `search.*` (study name, storage URL, trial
number, pruner spec, direction). The job opens the storage itself, reports `optimized_metric` after every
epoch (step = epoch counted across stages) and, when the pruner says so, marks its trial PRUNED in the
storage (the job is the one that knows) and raises `errors.Pruned`; the recipe then ends the MLflow run
KILLED with a `pruned` tag, and the sweeper reads the trial's state back from the storage.

With inner cross-validation (`search.inner_fold=j` of `search.inner_folds=k`) the study's steps are the inner folds,
not epochs: the job reports nothing per epoch, records its MLflow run under `mlflow.run_id.inner<j>` and returns its
objective, which the sweeper reports as step j (`search/inner_cv.py`), pruning between folds.

In a study with several objectives (the study's metric names, e.g. val/auroc and val/balanced_acc) Optuna has
no intermediate values and no pruning: the job records each epoch's objectives in the trial's user attribute
`objectives_by_epoch`, and the sweeper takes them at the best epoch (selected by the first, `optimized_metric`).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Callable

from ttm_experiments.config.schema import SearchConf, parse_metric
from ttm_experiments.errors import ConfigError, Pruned
from ttm_experiments.tracking.optuna_storage import (
    display_storage,
    load_study,
    normalize_storage,
    open_storage,
    trial_id,
)

if TYPE_CHECKING:  # the sweeper imports this module too, and needs no torch
    from ttm_experiments.training.loop import EpochRecord

log = logging.getLogger(__name__)

# trial user attributes: what the sweeper and the job tell each other through the storage
ATTR_PARENT_RUN = "mlflow.parent_run_id"  # set by the sweeper: the study's MLflow run
ATTR_RUN = "mlflow.run_id"  # set by the job: its own MLflow run
ATTR_OVERRIDES = "hydra.overrides"  # set by the sweeper: the job's overrides, for the best command
ATTR_DIGEST = "dataset.digest"  # a study attribute, set by its first job: the digest of the dataset's windows
ATTR_BY_EPOCH = "objectives_by_epoch"  # set by the job of a multi-objective study: {epoch: [value per objective]}


def _check(search: SearchConf) -> tuple[str, str, int]:
    if not search.study_name or not search.storage:
        raise ConfigError(
            f"search.trial_number={search.trial_number} needs search.study_name and search.storage "
            "(the Optuna sweeper sets all three); to train without a study, leave search.* unset"
        )
    return search.study_name, normalize_storage(search.storage), int(search.trial_number)


def inner_run_attr(fold: int) -> str:
    """The trial user attribute that holds inner fold `fold`'s MLflow run id."""
    return f"{ATTR_RUN}.inner{int(fold)}"


def search_tags(search: SearchConf) -> dict[str, str]:
    """MLflow tags of a trial's run: study, trial number, state, and the study's run as its parent; an inner-CV
    job's fold; a refit's study."""
    if search.trial_number is None:
        if search.refit and search.tuned_in:  # the nested-CV report takes its test AUROC as the study's estimate
            return {"optuna.study": str(search.tuned_in), "optuna.refit": "true"}
        return {}
    name, url, number = _check(search)
    tags = {
        "optuna.study": name,
        "optuna.trial": str(number),
        "optuna.storage": display_storage(url),
        "optuna.state": "RUNNING",
        "optuna.pruner": search.pruner or "none",
    }
    if search.inner_fold is not None:  # its test/* metrics are inner-validation numbers: no report reads them
        tags.update({"optuna.inner_fold": str(search.inner_fold), "optuna.inner_folds": str(search.inner_folds)})
    attrs = open_storage(url).get_trial(trial_id(url, name, number)).user_attrs
    if attrs.get(ATTR_PARENT_RUN):
        tags["mlflow.parentRunId"] = str(attrs[ATTR_PARENT_RUN])
    return tags


def epoch_hooks(
    search: SearchConf, metric: str, tracker, *, dataset_digest: str
) -> tuple[Callable[[EpochRecord], None], ...]:
    """The hooks `Trainer` calls after every epoch: none outside a study, else one that reports and prunes (after
    checking that the study was tuned on the same windows, `dataset_digest`)."""
    if search.trial_number is None:
        return ()
    if search.inner_fold is not None:
        register_inner_job(search, tracker, dataset_digest=dataset_digest)
        return ()
    reporter = TrialReporter(search, metric, tracker)
    bind_dataset_digest(reporter.study, dataset_digest, display_storage(reporter.storage_url))
    return (reporter,)


def register_inner_job(search: SearchConf, tracker, *, dataset_digest: str) -> None:
    """An inner-CV job: its trial must still run, its inner fold's windows must be the study's (one digest per
    inner fold), and its MLflow run is recorded on the trial for the sweeper and the study's run."""
    name, url, number = _check(search)
    study = load_study(name, url)
    tid = trial_id(url, name, number)
    state = open_storage(url).get_trial(tid).state
    if state.is_finished():
        raise ConfigError(
            f"search.trial_number={number}: trial {number} of study '{name}' is already {state.name}; a finished "
            "trial cannot run again. To repeat it, run without the search.* overrides."
        )
    bind_dataset_digest(
        study, dataset_digest, display_storage(url), key=f"{ATTR_DIGEST}.inner{search.inner_fold}of{search.inner_folds}"
    )
    if getattr(tracker, "run_id", None):
        open_storage(url).set_trial_user_attr(tid, inner_run_attr(search.inner_fold), tracker.run_id)
    log.info(
        "Optuna trial %d of study '%s' (%s): inner fold %d of %d; the sweeper reports its objective as step %d",
        number,
        name,
        display_storage(url),
        search.inner_fold,
        search.inner_folds,
        search.inner_fold,
    )


class TrialReporter:
    """Reports `metric` of every epoch to the job's trial and prunes it when the study's pruner says so."""

    def __init__(self, search: SearchConf, metric: str, tracker):
        import optuna

        self.study_name, self.storage_url, self.number = _check(search)
        (split, self.key, _), self.metric, self.tracker = parse_metric(metric), metric, tracker
        self.split = split
        self.pruner = search.pruner or "none"
        self.study = load_study(self.study_name, self.storage_url, self.pruner)
        first = self.study.directions[0].name.lower()  # several objectives: the first is optimized_metric's
        if first != search.direction.value:  # search.direction: a Direction
            raise ConfigError(f"search.direction={search.direction.value} but study '{self.study_name}' is to {first}")
        self.objectives = list(self.study.metric_names or [metric]) if len(self.study.directions) > 1 else []
        self.by_epoch: dict[str, list[float]] = {}
        tid = trial_id(self.storage_url, self.study_name, self.number)
        state = open_storage(self.storage_url).get_trial(tid).state
        if state.is_finished():
            raise ConfigError(
                f"search.trial_number={self.number}: trial {self.number} of study '{self.study_name}' "
                f"is already {state.name}; a finished trial cannot run again. To repeat it, run "
                "without the search.* overrides."
            )
        self.trial = optuna.trial.Trial(self.study, tid)
        if getattr(tracker, "run_id", None):
            self.trial.set_user_attr(ATTR_RUN, tracker.run_id)
        self.best = -math.inf if first == "maximize" else math.inf
        log.info(
            "Optuna trial %d of study '%s' (%s): reporting %s every epoch, pruner %s",
            self.number,
            self.study_name,
            display_storage(self.storage_url),
            metric,
            self.pruner,
        )

    def __call__(self, record: EpochRecord) -> None:
        import optuna

        if self.objectives:
            self._record_objectives(record)
            return
        values = record.val if self.split == "val" else record.train
        value = values.get(self.key)
        if value is None or not math.isfinite(float(value)):
            log.warning("epoch %d: %s is %s; not reported to trial %d", record.epoch, self.metric, value, self.number)
            return
        value = float(value)
        self.best = max(self.best, value) if self.study.directions[0].name == "MAXIMIZE" else min(self.best, value)
        self.trial.report(value, record.epoch)
        if not self.trial.should_prune():
            return
        self.study.tell(self.number, state=optuna.trial.TrialState.PRUNED)
        message = (
            f"trial {self.number} of study '{self.study_name}' pruned after epoch {record.epoch} "
            f"(stage {record.stage}) by the {self.pruner} pruner: {self.metric} = {value:.4f}, "
            f"best so far {self.best:.4f}"
        )
        log.warning("PRUNED: %s", message)
        try:
            self.tracker.set_tags({"optuna.state": "PRUNED", "optuna.pruned_epoch": str(record.epoch)})
        except Exception:  # the storage already says PRUNED; the recipe tags the run again
            log.exception("could not tag the MLflow run as pruned")
        raise Pruned(message)

    def _record_objectives(self, record: EpochRecord) -> None:
        """Each objective of this epoch, in the trial's user attributes (one write per epoch)."""
        row = []
        for name in self.objectives:
            split, key, _ = parse_metric(name)
            value = (record.val if split == "val" else record.train).get(key)
            if value is None:
                raise ConfigError(
                    f"objective {name} of study '{self.study_name}' is not a per-epoch metric of this run; "
                    f"the {split} metrics are {sorted(record.val if split == 'val' else record.train)}"
                )
            row.append(float(value))
        self.by_epoch[str(record.epoch)] = row
        self.trial.set_user_attr(ATTR_BY_EPOCH, dict(self.by_epoch))


def objectives_at_best_epoch(by_epoch: dict, returned: float) -> list[float] | None:
    """The objectives of the first epoch whose first objective is the job's return value (the trainer keeps the
    first epoch that is strictly better, and returns the first objective there); None when no epoch matches."""
    for epoch in sorted(by_epoch, key=int):
        row = by_epoch[epoch]
        if row and math.isclose(row[0], returned, rel_tol=1e-12, abs_tol=0.0):
            return [float(v) for v in row]
    return None


def bind_dataset_digest(study, digest: str, storage: str, *, key: str = ATTR_DIGEST) -> None:
    """The job's side: the digest of the dataset's windows (all splits) is recorded on the study (under `key`: an
    inner fold has its own) by its first trial; a later trial on other windows (a relabelled or re-exported dataset
    under the same name) is refused before it trains."""
    if study.user_attrs.get(key) is None:
        # two first trials may write at once (Optuna's RDB storage drops one of the writes): read back what won
        study.set_user_attr(key, digest)
    recorded = study.user_attrs.get(key)
    if recorded != digest:
        raise ConfigError(
            f"study '{study.study_name}' in {storage} was tuned on a dataset whose windows have digest {recorded}; "
            f"this trial's windows have digest {digest} (the data changed under the same name and root). Its trials "
            "would not be comparable. Fix: start a new study, hydra.sweeper.study_name=<new name>"
        )
