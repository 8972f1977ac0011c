"""Trial bookkeeping of the Optuna sweeper: tell a trial its final state, record why it failed, log one line per
finished trial and update the study's MLflow run."""

from __future__ import annotations

import logging
import math
from typing import Optional

from ttm_experiments.errors import UserError
from ttm_experiments.search import summary
from ttm_experiments.search.adopt import Orphan, TrialLocks
from ttm_experiments.training.trial import ATTR_RUN

log = logging.getLogger(__name__)


def _storage(study):
    """The study's storage object (an in-memory study has no URL to open it again by)."""
    return study._storage


def _trial_id(study, number: int) -> int:
    return _storage(study).get_trial_id_from_study_id_trial_number(study._study_id, int(number))


def objective_values(value, n_objectives: int) -> list[float]:
    """A job's return value as the study's values: a float (one objective) or a sequence of n floats, each
    finite; ValueError says why not."""
    if n_objectives == 1:
        try:
            values = [float(value)]
        except (TypeError, ValueError):
            raise ValueError(f"the job returned {value!r}; it must return a float") from None
    else:
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(
                f"the job returned {value!r}; with {n_objectives} directions it must return a list or tuple of "
                f"{n_objectives} floats"
            ) from None
        if len(values) != n_objectives:
            raise ValueError(
                f"the job returned {len(values)} values for {n_objectives} objectives (hydra.sweeper.direction)"
            )
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"the job returned {value!r}: the objective is {bad[0]}; it must be finite")
    return values


def _at_best_epoch(frozen, returned: float, n_objectives: int) -> list[float]:
    from ttm_experiments.training.trial import ATTR_BY_EPOCH, objectives_at_best_epoch

    by_epoch = frozen.user_attrs.get(ATTR_BY_EPOCH) or {}
    values = objectives_at_best_epoch(by_epoch, returned)
    if values is None or len(values) != n_objectives:
        raise ValueError(
            f"the job returned {returned!r}, but none of the {len(by_epoch)} epochs it recorded has that first "
            f"objective: the study cannot tell its {n_objectives} objectives at the best epoch"
        )
    return objective_values(values, n_objectives)


def record_trial(
    study,
    number: int,
    ret,
    *,
    launch_error: Optional[BaseException],
    metric: str,
    study_run,
    n_objectives: int = 1,
    log_traceback: bool = True,
    from_epochs: bool = False,
) -> Optional[str]:
    """Set the trial's final state (unless its job did) and report it; returns a failure message or None.

    `from_epochs`: the job returns its first objective and recorded every objective per epoch (a ttm-train job
    of a multi-objective study, `training/trial.py`): the study gets them at the job's best epoch."""
    import optuna
    from hydra.core.utils import JobStatus

    TrialState = optuna.trial.TrialState
    storage = _storage(study)
    tid = _trial_id(study, number)
    frozen = storage.get_trial(tid)
    failure = None
    if frozen.state.is_finished():  # the job pruned itself (or another process finished it)
        pass
    elif ret is not None and ret.status == JobStatus.COMPLETED:
        try:
            values = objective_values(ret.return_value, 1 if from_epochs else n_objectives)
            if from_epochs:
                values = _at_best_epoch(frozen, values[0], n_objectives)
        except ValueError as err:
            failure = str(err)
            storage.set_trial_user_attr(tid, "fail_reason", failure[:500])
            tell(study, number, state=TrialState.FAIL)
        else:
            tell(study, number, values=values)
    else:
        err = launch_error if ret is None else ret._return_value
        failure = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:500]
        storage.set_trial_user_attr(tid, "fail_reason", failure)
        tell(study, number, state=TrialState.FAIL)
        if log_traceback and not isinstance(err, UserError) and err is not None and err.__traceback__ is not None:
            log.error("trial %d failed", number, exc_info=err)
        elif not log_traceback:
            log.warning("trial %d failed: %s", number, failure)
    log_trial(study, storage.get_trial(tid), failure=failure, metric=metric, study_run=study_run)
    return failure


def log_trial(study, frozen, *, failure: Optional[str], metric: str, study_run) -> None:
    """One line per finished trial (state, value or reason, params, MLflow run), and the study run's update."""
    state = frozen.state.name
    trials = study.get_trials(deepcopy=False)
    single = len(study.directions) == 1
    best = summary.best_value_so_far(trials, study.direction.name == "MAXIMIZE") if single else None
    params = " ".join(f"{k}={summary.fmt(v)}" for k, v in frozen.params.items())
    run_id = frozen.user_attrs.get(ATTR_RUN)
    if state == "COMPLETE":
        detail = f"{metric} " + ", ".join(f"{v:.4f}" for v in frozen.values)
    elif state == "PRUNED":
        last = max(frozen.intermediate_values) if frozen.intermediate_values else None
        unit = "inner fold" if frozen.user_attrs.get("inner_cv.folds") else "epoch"  # search/inner_cv.py: steps
        detail = f"at {unit} {last} ({metric} {frozen.intermediate_values[last]:.4f})" if last is not None else ""
    else:
        detail = failure or frozen.user_attrs.get("fail_reason", "")
    log.info(
        "trial %d %-8s %s | %s%s", frozen.number, state, detail, params, f" | MLflow run {run_id}" if run_id else ""
    )
    if study_run is not None:
        try:
            study_run.trial_finished(
                frozen.number,
                state,
                frozen.values[0] if state == "COMPLETE" and single else None,
                run_id,
                best,
                summary.counts(trials),
            )
        except Exception:  # MLflow is the record, the storage is the truth: the study goes on
            log.exception("could not record trial %d in MLflow", frozen.number)


def tell(study, trial: int, **kwargs) -> None:
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as err:  # GridSampler asks the study to stop once the grid is used up: the state is set
        if "Study.stop" not in str(err):
            raise


def fail_running(study, numbers: list[int]) -> None:
    import optuna

    for number in numbers:
        try:
            if not _storage(study).get_trial(_trial_id(study, number)).state.is_finished():
                study.tell(number, state=optuna.trial.TrialState.FAIL)
        except Exception:
            log.exception("could not mark trial %d failed", number)


def finish_adopted(
    study, *, metric: str, study_run, orphans: list[Orphan], asked: list[int], locks: TrialLocks
) -> None:
    """Adopted trials whose job had finished before its sweeper died: the study learns what they recorded."""
    import optuna

    for o in orphans:
        state, value = o.finished  # type: ignore[misc]
        asked.append(o.number)
        if state == "COMPLETE":
            tell(study, o.number, values=value)
        else:
            tell(study, o.number, state=optuna.trial.TrialState.PRUNED)
        log_trial(
            study,
            _storage(study).get_trial(_trial_id(study, o.number)),
            failure=None,
            metric=metric,
            study_run=study_run,
        )
        locks.release(o.number)
