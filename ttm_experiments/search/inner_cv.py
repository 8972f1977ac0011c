"""Inner cross-validation in the Optuna sweeper (`search.inner_folds=k`, ttm-train's trial node).

Each trial is one configuration scored on k inner folds of the outer training and validation subjects
(`data/inner_folds.py`). The sweeper launches the trials of a batch fold by fold: inner fold 0 of every trial of
the batch together, then fold 1 of those still running, and so on. After each fold it reports the fold's objective
(the job's return value: its `optimized_metric` at its best epoch on inner fold j) as step j of the trial
(`Trial.report(value, j)`) and asks the study's pruner; a pruned trial launches no more folds. A trial that ran all
k folds is told the mean of its k values. Every trial has the same steps 0..k-1 on the same folds, which is what
`WilcoxonPruner` pairs (any other pruner works on the same steps).

A pruned trial stays PRUNED, with its folds so far as intermediate values (Optuna's documentation suggests telling
the mean of the folds so far as a COMPLETE value instead): so the study's best value is always a mean over all k
folds, and the refit is always of a configuration that was scored on every fold.

After the study, the best trial's configuration is trained once more on the outer split (`search.refit=true`,
`search.tuned_in=<study>`): its test AUROC on the outer test fold is the study's outer estimate, which the
nested-CV report reads (`report/nested.py`); the inner runs carry `optuna.inner_fold` and are never read there.

Interruptions: an inner job that finished left its objective in its job directory's marker
(`<sweep_dir>/<trial>/inner<j>/last.pt`); a resumed trial takes those values instead of running the fold again, and
reruns the others (which resume from their own `last.pt`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from ttm_experiments.errors import ConfigError
from ttm_experiments.search.adopt import ATTR_JOB_DIR, finished_outcome
from ttm_experiments.search.space import SearchSpace, SearchSpaceError, quote, trial_name
from ttm_experiments.search.trials import _storage, _trial_id, log_trial, objective_values, tell
from ttm_experiments.training.trial import ATTR_OVERRIDES

log = logging.getLogger(__name__)

ATTR_FOLDS = "inner_cv.folds"  # a study and trial attribute: the number of inner folds


def inner_folds(config: DictConfig, trial_node: Optional[str]) -> Optional[int]:
    """`<trial_node>.inner_folds` of the sweep's config (None: no inner cross-validation)."""
    if not trial_node:
        return None
    k = OmegaConf.select(config, f"{trial_node}.inner_folds", default=None)
    return None if k is None else int(k)


def check_plan(k: int, space: SearchSpace, directions: list[str], trial_node: str) -> None:
    """What an inner-CV study cannot be: fewer than 2 folds, several objectives, folds swept or set by hand."""
    if k < 2:
        raise ConfigError(f"{trial_node}.inner_folds={k}: inner cross-validation needs at least 2 folds (or null)")
    if len(directions) > 1:
        raise ConfigError(
            f"{trial_node}.inner_folds={k} with {len(directions)} objectives: the inner-fold mean is one objective. "
            f"Fix: one optimized_metric, or {trial_node}.inner_folds=null"
        )
    for key in (f"{trial_node}.inner_folds", f"{trial_node}.inner_fold", f"{trial_node}.refit"):
        if key in space.distributions:
            raise SearchSpaceError(f"{key} is swept ({space.distributions[key]}); it is a setting of the whole study")
    if f"{trial_node}.inner_fold" in space.fixed or f"{trial_node}.refit" in space.fixed:
        raise SearchSpaceError(
            f"{trial_node}.inner_fold and {trial_node}.refit are set by the sweeper for each job; give only "
            f"{trial_node}.inner_folds=<k>"
        )


def warn_if_never_prunes(spec: str, k: int) -> None:
    """A pruner that cannot stop a trial before its last fold is only bookkeeping: say so (the study still runs)."""
    import optuna

    from ttm_experiments.tracking.optuna_storage import build_pruner

    pruner = build_pruner(spec)
    why = None
    if isinstance(pruner, optuna.pruners.WilcoxonPruner) and pruner._p_threshold <= 2.0 ** -(k - 1):
        why = (
            f"with {k - 1} folds compared the smallest one-sided p-value is {2.0 ** -(k - 1):g}, not below its "
            f"p_threshold {pruner._p_threshold:g}. Fix: hydra.sweeper.pruner.p_threshold={2.0 ** -(k - 1) + 0.05:g} "
            "or more inner folds"
        )
    elif getattr(pruner, "_n_warmup_steps", 0) >= k - 1:
        why = f"its n_warmup_steps={pruner._n_warmup_steps} counts steps, here folds 0..{k - 1}"
    if why:
        log.warning("the pruner %s cannot prune any trial before its last inner fold: %s", spec, why)


def bind(study, k: Optional[int], storage: str) -> None:
    """A study is scored with one number of inner folds (or none) for good: steps and values of trials scored
    otherwise are not comparable. A study made before this setting existed had none."""
    attrs = study.user_attrs
    if ATTR_FOLDS not in attrs and study.get_trials(deepcopy=False):
        recorded = None
    else:
        recorded = attrs.get(ATTR_FOLDS, k)
    if recorded != k:
        had = "no inner folds (one validation fold)" if recorded is None else f"search.inner_folds={recorded}"
        raise ConfigError(
            f"study '{study.study_name}' in {storage} scored its trials with {had}; this sweep has "
            f"search.inner_folds={k}: their values would not be comparable. Fix: the study's own setting, or "
            "hydra.sweeper.study_name=<new name>"
        )
    if ATTR_FOLDS not in attrs:
        study.set_user_attr(ATTR_FOLDS, k)


def fold_overrides(overrides: list[str], number: int, fold: int, k: int, trial_node: str) -> list[str]:
    """A trial's job overrides for its inner fold `fold`: its own job directory `<trial>/inner<fold>` and run name."""
    out = []
    for ov in overrides:
        if ov.startswith("hydra.sweep.subdir="):
            continue
        if ov.startswith("run_name="):  # the sweeper's `trial 3: ...`: say which fold
            name = ov.split("=", 1)[1].strip("'")
            ov = f"run_name={quote(name.replace(f'trial {number}', f'trial {number} fold {fold}/{k}', 1))}"
        out.append(ov)
    return [*out, f"{trial_node}.inner_fold={fold}", f"hydra.sweep.subdir={number}/inner{fold}"]


def run_trials(
    launch: Callable[[list[tuple[str, ...]], int], list],
    study,
    jobs: list[tuple[int, list[str]]],
    *,
    k: int,
    pruner,
    trial_node: str,
    job_idx: int,
    metric: str,
    study_run,
) -> tuple[list[str], list[Any], Optional[BaseException]]:
    """Run a batch of trials fold by fold (see the module docstring); returns the failure messages, the failed
    jobs' returns (their own errors) and a launcher error, if any."""
    import optuna

    storage = _storage(study)
    alive = {number: list(overrides) for number, overrides in jobs}
    values: dict[int, list[float]] = {number: [] for number in alive}
    failures: list[str] = []
    failed_returns: list[Any] = []
    launch_error: Optional[BaseException] = None
    for number in alive:
        storage.set_trial_user_attr(_trial_id(study, number), ATTR_FOLDS, k)
    for fold in range(k):
        outcome: dict[int, Any] = {}
        todo = []
        for number in alive:
            done = _finished_fold(study, number, fold)
            if done is not None:
                outcome[number] = done
                log.info("trial %d: inner fold %d had finished (%.4f); not run again", number, fold, done)
            else:
                todo.append(number)
        if todo:
            batch = [tuple(fold_overrides(alive[n], n, fold, k, trial_node)) for n in todo]
            try:
                returns = list(launch(batch, job_idx * k + fold * len(jobs)))
            except Exception as err:  # the whole batch of this fold failed: recorded as FAIL
                log.error("the launcher failed on inner fold %d of trials %s: %s", fold, todo, err)
                returns, launch_error = [None] * len(todo), err
            outcome.update(zip(todo, returns))
        for number in list(alive):
            ret = outcome[number]
            value, failure = _fold_value(ret, launch_error)
            tid = _trial_id(study, number)
            if failure is not None:
                failure = f"inner fold {fold}: {failure}"
                storage.set_trial_user_attr(tid, "fail_reason", failure[:500])
                tell(study, number, state=optuna.trial.TrialState.FAIL)
                failures.append(failure)
                if ret is not None and not isinstance(ret, float):
                    failed_returns.append(ret)
                del alive[number]
                log_trial(study, storage.get_trial(tid), failure=failure, metric=metric, study_run=study_run)
                continue
            values[number].append(value)
            optuna.trial.Trial(study, tid).report(value, fold)
            log.info("trial %d: inner fold %d of %d: %s = %.4f", number, fold, k, metric, value)
            if fold + 1 < k and pruner.prune(study, storage.get_trial(tid)):
                tell(study, number, state=optuna.trial.TrialState.PRUNED)
                del alive[number]
                log_trial(study, storage.get_trial(tid), failure=None, metric=metric, study_run=study_run)
    for number in alive:
        tell(study, number, values=[sum(values[number]) / k])
        log_trial(study, storage.get_trial(_trial_id(study, number)), failure=None, metric=metric, study_run=study_run)
    return failures, failed_returns, launch_error


def _finished_fold(study, number: int, fold: int) -> Optional[float]:
    """The objective an inner job of this trial left in its finished marker (a resumed trial), or None."""
    job_dir = _storage(study).get_trial(_trial_id(study, number)).user_attrs.get(ATTR_JOB_DIR)
    if not job_dir:
        return None
    done = finished_outcome(Path(job_dir) / f"inner{fold}")
    return done[1] if done is not None and done[0] == "COMPLETE" else None


def _fold_value(ret, launch_error: Optional[BaseException]) -> tuple[Optional[float], Optional[str]]:
    """A fold's objective, or why there is none."""
    from hydra.core.utils import JobStatus

    if isinstance(ret, float):  # taken from a finished marker
        return ret, None
    if ret is None:
        err = launch_error
        return None, f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:500]
    if ret.status != JobStatus.COMPLETED:
        err = ret._return_value
        return None, f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:500]
    try:
        return objective_values(ret.return_value, 1)[0], None
    except ValueError as err:
        return None, str(err)


def refit_overrides(best, study_name: str, trial_node: str) -> list[str]:
    """The best trial's configuration on the outer split: its overrides without the trial node's, tagged as the
    study's refit, in its own job directory `refit-trial<n>`."""
    overrides = list(best.user_attrs.get(ATTR_OVERRIDES) or [])
    keep = [ov for ov in overrides if not ov.startswith((f"{trial_node}.", "hydra.sweep.subdir=", "run_name="))]
    named = any(ov.startswith("run_name=") for ov in overrides)  # the sweeper names the runs (ttm-train)
    return [
        *keep,
        f"{trial_node}.inner_folds=null",
        f"{trial_node}.tuned_in={quote(study_name)}",
        f"{trial_node}.refit=true",
        *([f"run_name={quote('refit of ' + trial_name(best.number, best.params))}"] if named else []),
        f"hydra.sweep.subdir=refit-trial{best.number}",
    ]


def refit(
    launch: Callable[[list[tuple[str, ...]], int], list],
    study,
    best,
    *,
    trial_node: str,
    sweep_dir: Path,
    job_idx: int,
) -> None:
    """Train the best trial's configuration on the outer split (once per best trial: a rerun that finds its
    finished marker does not train it again). A failed refit stops the sweep with its error: the study's result
    stands, but it has no outer estimate."""
    from hydra.core.utils import JobStatus

    from ttm_experiments.search.space import SweepError

    done = finished_outcome(sweep_dir / f"refit-trial{best.number}")
    if done is not None:
        log.info("the refit of trial %d on the outer split had finished: not run again", best.number)
        return
    overrides = refit_overrides(best, study.study_name, trial_node)
    log.info("refit of trial %d (inner-fold mean %.4f) on the outer split: %s", best.number, best.value, overrides)
    (ret,) = launch([tuple(overrides)], job_idx)
    if ret.status != JobStatus.COMPLETED:
        err = ret._return_value
        raise SweepError(
            f"error: the refit of trial {best.number} on the outer split failed ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); the study's result stands, but it has "
            "no outer test number. Fix the cause and rerun the same command (it asks no new trial and refits)"
        ) from err
    log.info("refit of trial %d: outer validation %s", best.number, ret.return_value)
