"""Trial bookkeeping of the Optuna sweeper: tell a trial its final state, record why it failed, log one line per
finished trial and update the study's MLflow run."""

from __future__ import annotations

import logging
import math
from typing import Optional

from ttm_experiments.errors import UserError
from ttm_experiments.search import summary
from ttm_experiments.search.adopt import Orphan, TrialLocks
from ttm_experiments.tracking.optuna_storage import open_storage, trial_id
from ttm_experiments.training.trial import ATTR_RUN

log = logging.getLogger(__name__)


def record_trial(
    study, number: int, ret, *, storage_url: str, launch_error: Optional[BaseException], metric: str, study_run
) -> Optional[str]:
    """Set the trial's final state (unless its job did) and report it; returns a failure message or None."""
    import optuna
    from hydra.core.utils import JobStatus

    TrialState = optuna.trial.TrialState
    storage = open_storage(storage_url)
    tid = trial_id(storage_url, study.study_name, number)
    frozen = storage.get_trial(tid)
    failure = None
    if frozen.state.is_finished():  # the job pruned itself (or another process finished it)
        pass
    elif ret is not None and ret.status == JobStatus.COMPLETED:
        try:
            value = float(ret.return_value)
            if not math.isfinite(value):
                raise ValueError(f"the objective is {value}")
            tell(study, number, values=value)
        except (TypeError, ValueError) as err:
            failure = f"the job returned {ret.return_value!r} ({err}); it must return a finite float"
            tell(study, number, state=TrialState.FAIL)
    else:
        err = launch_error if ret is None else ret._return_value
        failure = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:500]
        storage.set_trial_user_attr(tid, "fail_reason", failure)
        tell(study, number, state=TrialState.FAIL)
        if not isinstance(err, UserError) and err is not None and err.__traceback__ is not None:
            log.error("trial %d failed", number, exc_info=err)
    log_trial(study, storage.get_trial(tid), failure=failure, metric=metric, study_run=study_run)
    return failure


def log_trial(study, frozen, *, failure: Optional[str], metric: str, study_run) -> None:
    """One line per finished trial (state, value or reason, params, MLflow run), and the study run's update."""
    state = frozen.state.name
    trials = study.get_trials(deepcopy=False)
    best = summary.best_value_so_far(trials, study.direction.name == "MAXIMIZE")
    params = " ".join(f"{k}={summary.fmt(v)}" for k, v in frozen.params.items())
    run_id = frozen.user_attrs.get(ATTR_RUN)
    if state == "COMPLETE":
        detail = f"{metric} {frozen.value:.4f}"
    elif state == "PRUNED":
        last = max(frozen.intermediate_values) if frozen.intermediate_values else None
        detail = f"at epoch {last} ({metric} {frozen.intermediate_values[last]:.4f})" if last else ""
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
                frozen.value if state == "COMPLETE" else None,
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


def fail_running(study, storage_url: str, numbers: list[int]) -> None:
    import optuna

    for number in numbers:
        try:
            tid = trial_id(storage_url, study.study_name, number)
            if not open_storage(storage_url).get_trial(tid).state.is_finished():
                study.tell(number, state=optuna.trial.TrialState.FAIL)
        except Exception:
            log.exception("could not mark trial %d failed", number)


def finish_adopted(
    study, *, storage_url: str, metric: str, study_run, orphans: list[Orphan], asked: list[int], locks: TrialLocks
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
        tid = trial_id(storage_url, study.study_name, o.number)
        log_trial(study, open_storage(storage_url).get_trial(tid), failure=None, metric=metric, study_run=study_run)
        locks.release(o.number)
