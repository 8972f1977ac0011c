"""The Optuna sweeper behind `hydra/sweeper: optuna` (registered by `hydra_plugins.ttm_optuna_sweeper`).

For any Hydra app it does what the released `hydra-optuna-sweeper` 1.3 does: build the search space from
`params` (or the deprecated `search_space`) and the command line, create or resume the study (in memory unless
`storage` is set), ask `n_jobs` trials at a time, launch them, tell each the value (or the values, for a list
of directions) its job returned, stop with the jobs' error once a batch's failure rate exceeds
`max_failure_rate`, and write `optimization_results.yaml` (best_params and best_value, or the Pareto front's
`solutions`). It also checks the search space against the config before anything runs and prints the best trial
as a ready-to-run command.

With a `trial_node` (ttm-train: `search`) each job gets its trial and reports to it, so it prunes itself
(`training/trial.py`); the study then lives in a file storage, is bound to its outer fold (`nested`), a dead
sweeper's RUNNING trials are taken over (`adopt`; trial n runs in `<hydra.sweep.dir>/<n>`), and a rerun with the
same `hydra.sweep.dir` asks only the trials still missing.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

from ttm_experiments.config.schema import parse_metric
from ttm_experiments.errors import ConfigError, UserError
from ttm_experiments.search import inner_cv, nested
from ttm_experiments.search.adopt import ATTR_JOB_DIR, ATTR_SWEEP, Orphan, TrialLocks, adopt_orphans, seeded_per_trial
from ttm_experiments.search.best import BestCommand, compose_job, finish_study, log_study
from ttm_experiments.search.space import (
    SearchSpace,
    SearchSpaceError,
    SweepError,
    format_value,
    grid,
    parse,
    probe_values,
    quote,
    trial_name,
)
from ttm_experiments.search.trials import fail_running, finish_adopted, record_trial
from ttm_experiments.tracking.optuna_storage import (
    build_pruner,
    display_storage,
    normalize_storage,
    open_storage,
    pruner_spec,
)
from ttm_experiments.training.trial import ATTR_OVERRIDES, ATTR_PARENT_RUN
from ttm_experiments.utils import faults
from ttm_experiments.utils.locks import holder

log = logging.getLogger(__name__)

# what the hydra-optuna-sweeper 1.2 release notes point to for params vs search_space
_UPGRADE_URL = "https://hydra.cc/docs/upgrades/1.1_to_1.2/changes_to_sweeper_config/"


@dataclass(frozen=True)
class AppDefaults:
    """What the sweeper's own keys (null in the plugin's node) mean for an app whose config has this schema."""

    trial_node: str
    job_validator: str
    mlflow: bool
    entrypoint: str


# ttm-train: its config is `TrainConfig`, whose `search` node takes the trial (config/schema.py: SearchConf)
TTM_TRAIN = AppDefaults(
    trial_node="search",
    job_validator="ttm_experiments.search.space.validate_train_config",
    mlflow=True,
    entrypoint="ttm-train",
)


def app_defaults(config: DictConfig) -> Optional[AppDefaults]:
    """TTM_TRAIN when the app's config is ttm-train's schema (its `search` node is a `SearchConf`), else None."""
    from ttm_experiments.config.schema import SearchConf

    node = config.get("search") if isinstance(config, DictConfig) and "search" in config else None
    return TTM_TRAIN if isinstance(node, DictConfig) and OmegaConf.get_type(node) is SearchConf else None


@dataclass(frozen=True)
class _Plan:
    """A sweep's settings once checked: what `_sweep` and its steps share."""

    space: SearchSpace
    directions: list[str]
    pruner: str
    storage_url: Optional[str]  # None: an in-memory study (no job reports to it)
    metrics: list[str]
    sampler: Any
    is_grid: bool
    n_trials: int
    sweep_dir: Path  # absolute: with a trial node, trial n runs in <sweep_dir>/<n>
    inner_folds: Optional[int] = None  # ttm-train's search.inner_folds: trials scored on k folds (search/inner_cv.py)

    @property
    def storage_shown(self) -> str:
        return display_storage(self.storage_url) if self.storage_url else "in memory"

    @property
    def direction(self) -> str:
        """The one direction of a single-objective study (what a job's trial node gets)."""
        return self.directions[0]

    @property
    def metric(self) -> str:
        return ", ".join(self.metrics)


class OptunaSweeperImpl(Sweeper):
    def __init__(
        self,
        sampler: Any = None,
        direction: Any = "minimize",
        storage: Optional[str] = None,
        study_name: Optional[str] = None,
        n_trials: int = 20,
        n_jobs: int = 2,
        max_failure_rate: float = 0.0,
        search_space: Optional[DictConfig] = None,
        custom_search_space: Optional[str] = None,
        params: Optional[DictConfig] = None,
        pruner: Any = None,
        trial_node: Optional[str] = None,
        job_validator: Optional[str] = None,
        mlflow: Optional[bool] = None,
        entrypoint: Optional[str] = None,
    ) -> None:
        self.sampler_conf = sampler
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
        self.max_failure_rate = float(max_failure_rate)
        self.params = params
        self.search_space = search_space
        self.custom_search_space = custom_search_space
        self.pruner = pruner
        self.trial_node = trial_node
        self.job_validator = job_validator
        self.mlflow = mlflow
        self.entrypoint = entrypoint
        self.pass_trial = False  # whether jobs get their trial (set when the sweep starts)
        self.add_run_name = False  # whether trial runs are named `trial <n>: <params>`
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        app = app_defaults(config)
        if app is not None:  # ttm-train: its own meaning of the keys left null
            self.trial_node = self.trial_node or app.trial_node
            self.job_validator = self.job_validator or app.job_validator
            self.mlflow = app.mlflow if self.mlflow is None else self.mlflow
            self.entrypoint = self.entrypoint or app.entrypoint

    # -- configuration ----------------------------------------------------------------------------------------
    def _directions(self) -> list[str]:
        value = self.direction
        values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
        if not values:
            raise ConfigError("hydra.sweeper.direction=[] is empty: give minimize or maximize, or a list of them")
        out = []
        for v in values:
            text = str(getattr(v, "name", v)).lower()
            if text not in ("minimize", "maximize"):
                raise ConfigError(f"hydra.sweeper.direction={value!r}: each must be minimize or maximize, not {v!r}")
            out.append(text)
        return out

    def _storage_url(self) -> Optional[str]:
        assert self.config is not None
        storage = self.storage
        if not storage:
            if not self.pass_trial:
                return None  # the released default: an in-memory study, told by this process only
            runs_dir = OmegaConf.select(self.config, "paths.runs_dir", default="runs")
            storage = f"sqlite:///{runs_dir}/optuna.db"
            log.info(
                "hydra.sweeper.storage is null: the study lives in %s (its jobs report to it, maybe from other "
                "processes, so it cannot live in memory)",
                storage,
            )
        if not self.pass_trial and str(storage).strip() in ("sqlite://", "sqlite:///:memory:"):
            return None  # an in-memory database: the same as null when no job opens the study
        return normalize_storage(str(storage))

    def _search_space_conf(self) -> Optional[DictConfig]:
        """The deprecated `search_space`, when it is the one to use (the released plugin's rule and warnings)."""
        from hydra._internal.deprecation_warning import deprecation_warning

        if self.search_space is None:
            return None
        if self.params is not None:
            warnings.warn(
                "Both hydra.sweeper.params and hydra.sweeper.search_space are configured.\n"
                f"Hydra will use hydra.sweeper.params for defining search space.\n{_UPGRADE_URL}",
                UserWarning,
                stacklevel=2,
            )
            return None
        deprecation_warning(
            "`hydra.sweeper.search_space` is deprecated and will be removed in the next major release.\n"
            f"Please configure with `hydra.sweeper.params`.\n{_UPGRADE_URL}"
        )
        return self.search_space

    def _sampler(self, space: SearchSpace):
        import optuna
        from hydra.utils import instantiate

        conf = self.sampler_conf
        if isinstance(conf, (DictConfig, dict)):  # null arguments: Optuna's defaults (some are deprecated)
            conf = OmegaConf.create({k: v for k, v in conf.items() if v is not None})
        sampler = instantiate(conf) if isinstance(conf, DictConfig) else conf
        if sampler is None:
            return optuna.samplers.TPESampler(), None
        size, grid_space = None, None
        if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
            grid_space = {name: grid(name, d) for name, d in space.distributions.items()}
            size = math.prod(len(v) for v in grid_space.values()) if grid_space else 1
            sampler = sampler(grid_space)
            log.info("the grid has %d points: n_trials is at most that", size)
        if not isinstance(sampler, optuna.samplers.BaseSampler):
            raise ConfigError(f"hydra.sweeper.sampler builds a {type(sampler).__name__}, not an Optuna sampler")
        seed = conf.get("seed") if isinstance(conf, DictConfig) else None
        # TPE and random search draw from their generator trial after trial: rebuilt per trial (search/adopt.py),
        # a rerun samples what the uninterrupted study did. Grid (its order) and QMC (its scramble) need one seed
        # for the whole study, and their trial n depends only on n and the storage: they resume as they are.
        if (
            self.pass_trial
            and seed is not None
            and type(sampler) in (optuna.samplers.TPESampler, optuna.samplers.RandomSampler)
        ):
            sampler = seeded_per_trial(lambda trial_seed: instantiate(conf, seed=trial_seed), int(seed))
        return sampler, size

    def _trial_node_ok(self) -> bool:
        assert self.config is not None
        if not self.trial_node:
            return False
        node = OmegaConf.select(self.config, self.trial_node, default=None)
        if not isinstance(node, DictConfig) or "trial_number" not in node:
            raise ConfigError(
                f"hydra.sweeper.trial_node={self.trial_node}, but the config has no {self.trial_node}.trial_number: "
                "jobs could not find their trial. Fix: hydra.sweeper.trial_node=<the node that holds study_name, "
                "storage, trial_number, pruner and direction>, or null"
            )
        return True

    def _search_overrides(self, study_name: str, storage: str, number: int, pruner: str, direction: str) -> list[str]:
        if not self.pass_trial:
            return []
        n = self.trial_node
        return [
            f"{n}.study_name={quote(study_name)}",
            f"{n}.storage={quote(storage)}",
            f"{n}.trial_number={number}",
            f"{n}.pruner={quote(pruner)}",
            f"{n}.direction={direction}",
        ]

    # -- validation -----------------------------------------------------------------------------------------------
    def _validator(self) -> Optional[Callable[[DictConfig], None]]:
        if not self.job_validator:
            return None
        from hydra.utils import get_method

        return get_method(self.job_validator)

    def validate(self, space: SearchSpace, search_overrides: list[str]) -> None:
        """Compose the job at every probe value of every parameter: a bad key or value stops here, named."""
        from hydra.errors import HydraException

        validator = self._validator()
        base = list(space.fixed.values()) + search_overrides

        def check(extra: list[str], what: str) -> None:
            try:
                cfg = compose_job(self.hydra_context, self.config, base + extra)
            except (HydraException, ValueError, KeyError) as err:
                raise SearchSpaceError(f"{what} does not fit the config: {_explain(err)}") from None
            if validator is not None:
                try:
                    validator(cfg)
                except UserError as err:
                    raise SearchSpaceError(f"{what} is invalid for the job: {err}") from None

        probes = {
            name: [f"{name}={format_value(v)}" for v in probe_values(d)[:32]] for name, d in space.distributions.items()
        }
        # composing is slow (~0.2 s): probe all parameters at once, row by row, and only when a row fails
        # compose parameter by parameter to name the culprit
        rows = max((len(p) for p in probes.values()), default=0)
        for i in range(max(rows, 1)):
            row = [p[i % len(p)] for p in probes.values()]
            try:
                check(row, "")
                continue
            except SearchSpaceError:
                pass
            check([], "the fixed overrides " + " ".join(space.fixed.values()) if space.fixed else "the base config")
            for name, overrides in probes.items():
                override = overrides[i % len(overrides)]
                check([override], f"{space.origin.get(name, 'search space')} '{name}': {override}")
            check(row, "the search space at " + " ".join(row))  # only the combination fails

    # -- the sweep ------------------------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        """Run the study; like the released plugin's, it returns nothing (the results are in the study and in
        `<hydra.sweep.dir>/optimization_results.yaml`)."""
        try:
            self._sweep(arguments)
        except SweepError:
            raise
        except UserError as err:  # a setting the user can fix: the message, without a traceback
            raise SweepError(f"error: {err}") from None

    def _metrics(self, directions: list[str]) -> list[str]:
        """The objective names: the app's `optimized_metric` (one or a list) with a trial node, else objective(s)."""
        cfg = self.config
        value = OmegaConf.select(cfg, "optimized_metric", default=None) if self.pass_trial else None
        if value is None:
            return ["objective"] if len(directions) == 1 else [f"objective_{i}" for i in range(len(directions))]
        metrics = [str(v) for v in value] if isinstance(value, (list, tuple, ListConfig)) else [str(value)]
        if len(metrics) != len(directions):
            raise ConfigError(
                f"optimized_metric={metrics} has {len(metrics)} objective(s), hydra.sweeper.direction={directions} "
                f"{len(directions)}. Fix: one direction per metric, e.g. hydra.sweeper.direction="
                f"[{','.join(parse_metric(m).direction if '/' in m else 'maximize' for m in metrics)}]"
            )
        for metric, direction in zip(metrics, directions):
            wanted = parse_metric(metric).direction if "/" in metric else direction  # config/schema.py: the one rule
            if wanted != direction:
                fix = (
                    f"hydra.sweeper.direction={wanted}"
                    if len(metrics) == 1
                    else "hydra.sweeper.direction=["
                    + ",".join(parse_metric(m).direction if "/" in m else d for m, d in zip(metrics, directions))
                    + "]"
                )
                raise ConfigError(
                    f"optimized_metric={metric} is to {wanted}, but hydra.sweeper.direction={direction}"
                    f"{' for it' if len(metrics) > 1 else ''}. Fix: {fix}, or another optimized_metric."
                )
        return metrics

    def _plan(self, arguments: list[str]) -> "_Plan":
        """Everything the sweep needs, checked before the study is touched: space, direction, storage, sampler."""
        cfg = self.config
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ConfigError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate} must be between 0.0 and 1.0")
        self.pass_trial = self._trial_node_ok()
        space = parse(self.params, self._search_space_conf(), arguments)
        if self.pass_trial:
            # fixed in hydra.sweeper.params: not in the sweep's own config, which the study is bound to
            in_params = {k: v for k, v in space.fixed.items() if space.origin.get(k) == "hydra.sweeper.params"}
            nested.refuse_swept_fold(space.distributions, in_params)
        if not space.distributions and not self.custom_search_space:
            log.warning(
                "the search space is empty (no hydra.sweeper.params, no sweep on the command line): each of the "
                "%d trials runs the same config",
                self.n_trials,
            )
        directions = self._directions()
        metrics = self._metrics(directions)
        if self.pass_trial and len(metrics) > 1:
            # each job selects its best epoch by the first objective and records the others (training/trial.py)
            if "optimized_metric" in space.distributions:
                raise SearchSpaceError("optimized_metric is swept; with several objectives it lists them instead")
            space.fixed["optimized_metric"] = f"optimized_metric={metrics[0]}"
        pruner = pruner_spec(self.pruner)
        if pruner != "none" and not self.pass_trial:
            raise ConfigError(
                f"hydra.sweeper.pruner={pruner}, but no job reports to its trial (hydra.sweeper.trial_node is null), "
                "so nothing could be pruned. Fix: hydra.sweeper.pruner=null, or a trial_node"
            )
        if pruner != "none" and len(directions) > 1:
            raise ConfigError(
                f"hydra.sweeper.pruner={pruner} with {len(directions)} objectives: Optuna prunes single-objective "
                "studies only. Fix: hydra.sweeper.pruner=none"
            )
        k = inner_cv.inner_folds(cfg, self.trial_node) if self.pass_trial else None
        if k is not None:
            inner_cv.check_plan(k, space, directions, self.trial_node)
            inner_cv.warn_if_never_prunes(pruner, k)
        storage_url = self._storage_url()
        self.add_run_name = self.pass_trial and (
            OmegaConf.select(cfg, "run_name", default="missing") is None
            and not any(k.lstrip("+~") == "run_name" for k in (*space.fixed, *space.distributions))
        )
        sampler, grid_size = self._sampler(space)
        n_trials = self.n_trials if grid_size is None else min(self.n_trials, grid_size)
        if n_trials < 1 or self.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials} and n_jobs={self.n_jobs} must be >= 1")
        subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir")
        if self.pass_trial and subdir != "${hydra.job.num}":
            log.warning(
                "hydra.sweep.subdir=%s is not used by the Optuna sweeper: trial n runs in <hydra.sweep.dir>/n, "
                "so that a rerun finds a killed trial's job directory",
                subdir,
            )
        return _Plan(
            space=space,
            directions=directions,
            pruner=pruner,
            storage_url=storage_url,
            metrics=metrics,
            sampler=sampler,
            is_grid=grid_size is not None,
            n_trials=n_trials,
            sweep_dir=Path(str(cfg.hydra.sweep.dir)).expanduser().resolve(),
            inner_folds=k,
        )

    def _open_study(self, plan: "_Plan"):
        """Create or resume the study; a resumed one must keep its directions and distributions."""
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(
                study_name=self.study_name,
                storage=open_storage(plan.storage_url) if plan.storage_url else None,
                sampler=plan.sampler,
                directions=plan.directions,
                load_if_exists=True,
            )
            have = [d.name.lower() for d in study.directions]
            if have != plan.directions:
                raise ConfigError(
                    f"study '{study.study_name}' in {plan.storage_shown} is to {have if len(have) > 1 else have[0]}, "
                    f"but hydra.sweeper.direction={plan.directions if len(plan.directions) > 1 else plan.direction}"
                )
            if self.pass_trial and not study.metric_names:
                study.set_metric_names(plan.metrics)
        self._check_against_study(study, plan.space)
        if self.pass_trial:
            nested.bind_study(study, nested.outer_fold(self.config), plan.storage_shown)
            inner_cv.bind(study, plan.inner_folds, plan.storage_shown)
        before = len(study.get_trials(deepcopy=False))
        if before:
            log.info("study '%s' in %s resumes with %d trials", study.study_name, plan.storage_shown, before)
            if hasattr(plan.sampler, "reseed_rng"):
                plan.sampler.reseed_rng()  # a seeded sampler would otherwise repeat the first run's trials
        if self.pass_trial:
            study.set_user_attr("optimized_metric", plan.metrics[0] if len(plan.metrics) == 1 else plan.metrics)
        return study

    def _sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        t0 = time.perf_counter()
        plan = self._plan(arguments)
        probe = self._search_overrides("validation", plan.storage_url or "", 0, plan.pruner, plan.direction)
        if plan.inner_folds is not None:  # each job trains one inner fold
            probe.append(f"{self.trial_node}.inner_fold=0")
        self.validate(plan.space, probe)
        study = self._open_study(plan)
        log.info(
            "Optuna study '%s' (%s): %d trials, %d at a time, sampler %s, pruner %s, %s %s",
            study.study_name,
            plan.storage_shown,
            plan.n_trials,
            self.n_jobs,
            _sampler_name(plan.sampler),
            plan.pruner,
            "/".join(plan.directions),
            plan.metric,
        )
        if plan.inner_folds is not None:
            log.info(
                "each trial: %d inner folds of the outer training and validation subjects, one job each, reported as "
                "steps 0..%d; the study gets their mean; then a refit of the best on the outer split",
                plan.inner_folds,
                plan.inner_folds - 1,
            )
        if plan.space.distributions:
            log.info("search space: %s", ", ".join(f"{k}: {v}" for k, v in plan.space.distributions.items()))
        study_run = self._study_run(study.study_name, plan)
        asked: list[int] = []
        failures: list[str] = []
        locks = TrialLocks()
        try:
            job_idx, new = 0, plan.n_trials
            if self.pass_trial:  # resumable trials: adopt a dead sweeper's, ask only what this sweep dir misses
                trials = study.get_trials(deepcopy=False)
                orphans = adopt_orphans(trials, locks)
                before = sum(1 for t in trials if t.user_attrs.get(ATTR_SWEEP) == str(plan.sweep_dir))
                new = max(plan.n_trials - before, 0)
                if before:
                    log.info(
                        "this sweep (hydra.sweep.dir=%s) asked %d of its n_trials=%d trials before: %d to ask now%s",
                        plan.sweep_dir,
                        before,
                        plan.n_trials,
                        new,
                        "" if new else " (another hydra.sweep.dir, e.g. the default new one, adds n_trials more)",
                    )
                finish_adopted(
                    study,
                    metric=plan.metric,
                    study_run=study_run,
                    orphans=[o for o in orphans if o.finished],
                    asked=asked,
                    locks=locks,
                )
                relaunch = [o for o in orphans if not o.finished]
                for i in range(0, len(relaunch), self.n_jobs):
                    batch = relaunch[i : i + self.n_jobs]
                    jobs = [(o.number, self._relaunch_overrides(o, plan)) for o in batch]
                    failures += self._run_batch(study, plan, study_run, jobs, job_idx=job_idx, asked=asked, locks=locks)
                    job_idx += len(batch)
            for i in range(0, new, self.n_jobs):
                jobs = [self._ask_job(study, plan, study_run, locks) for _ in range(min(new - i, self.n_jobs))]
                failures += self._run_batch(study, plan, study_run, jobs, job_idx=job_idx, asked=asked, locks=locks)
                job_idx += len(jobs)
        except BaseException as err:
            if self.pass_trial and _resumable(err):  # a graceful stop: the jobs saved their state
                log.warning("trials %s stay RUNNING: rerun the same command to resume them", locks.held())
            else:
                fail_running(study, asked)
            if study_run is not None:
                study_run.end("KILLED")
            raise
        finally:
            locks.release_all()
        commands = BestCommand(
            self.hydra_context,
            self.config,
            self.trial_node if self.pass_trial else None,
            self.add_run_name,
            self.entrypoint or launch_command(),
        )
        outcome = finish_study(
            study,
            storage_shown=plan.storage_shown,
            asked=asked,
            metrics=plan.metrics,
            directions=plan.directions,
            seconds=time.perf_counter() - t0,
            best_command=commands,
            sweep_dir=Path(str(self.config.hydra.sweep.dir)),
            tuned_in=self.pass_trial,
            released_keys_only=not self.pass_trial,
        )
        if study_run is not None:
            log_study(study_run, outcome)
        if plan.inner_folds is not None and outcome.best is not None:
            inner_cv.refit(
                self._launch,
                study,
                outcome.best,
                trial_node=self.trial_node,
                sweep_dir=plan.sweep_dir,
                job_idx=job_idx * plan.inner_folds,  # after the inner jobs' numbers
            )
        if outcome.best is None and not outcome.front:
            if not self.pass_trial:  # the released plugin: a study without a complete trial has no result
                raise SweepError(
                    f"error: no trial of study '{study.study_name}' completed ({len(failures)} of this run's "
                    f"{len(asked)} failed; their errors are in the log above), so there is no best trial"
                )
            if asked and len(failures) == len(asked):
                raise SweepError(f"all {len(asked)} trials of this run failed; the first: {failures[0]}")

    def _ask_job(self, study, plan: "_Plan", study_run, locks: TrialLocks) -> tuple[int, list[str]]:
        """A new trial and its job: its sampled overrides (and, with a trial node: where to report, its run name
        and job directory, whose lock this sweeper holds until the trial is told: a rerun takes over only trials
        whose sweeper is gone)."""
        trial = self._ask(study, plan.space)
        job_dir = plan.sweep_dir / str(trial.number)
        if self.pass_trial and not locks.take(trial.number, job_dir):
            fail_running(study, [trial.number])
            raise SweepError(
                f"error: the job directory {job_dir} of trial {trial.number} is in use by process "
                f"{holder(job_dir)} (another study in the same hydra.sweep.dir?). Fix: give this "
                "study its own hydra.sweep.dir"
            )
        for key, override in plan.space.fixed.items():  # as the released plugin records them
            trial.set_user_attr(key, override.split("=", 1)[1] if "=" in override else None)
        if self.custom_search_space:
            from hydra.utils import get_method

            get_method(self.custom_search_space)(self.config, trial)
            overlap = sorted(set(trial.params) & set(plan.space.fixed))
            if overlap:
                fail_running(study, [trial.number])
                raise SearchSpaceError(
                    f"hydra.sweeper.custom_search_space={self.custom_search_space} suggests {overlap}, which the "
                    "search space fixes. Fix: remove them from hydra.sweeper.params or the command line"
                )
        sampled = [f"{name}={format_value(value)}" for name, value in trial.params.items()]
        job = list(plan.space.fixed.values()) + sampled
        if not self.pass_trial:
            trial.set_user_attr(ATTR_OVERRIDES, job)  # for the best trial's command
            return trial.number, job
        job += self._search_overrides(study.study_name, plan.storage_url, trial.number, plan.pruner, plan.direction)
        if self.add_run_name:
            job.append(f"run_name={quote(trial_name(trial.number, trial.params))}")  # `trial 3: last_n=2 lr=0.0004`
        job.append(f"hydra.sweep.subdir={trial.number}")
        trial.set_user_attr(ATTR_OVERRIDES, job)
        if study_run is not None:
            trial.set_user_attr(ATTR_PARENT_RUN, study_run.run_id)
        trial.set_user_attr(ATTR_SWEEP, str(plan.sweep_dir))
        trial.set_user_attr(ATTR_JOB_DIR, str(job_dir))  # last: from here on a dead sweeper's trial can be adopted
        return trial.number, job

    @staticmethod
    def _relaunch_overrides(orphan: Orphan, plan: "_Plan") -> list[str]:
        """An adopted trial's job as it was launched, into its own job directory (under its own sweep's dir)."""
        if orphan.sweep_dir and orphan.sweep_dir != str(plan.sweep_dir):
            return [*orphan.overrides, f"hydra.sweep.dir={quote(orphan.sweep_dir)}"]
        return list(orphan.overrides)

    def _run_batch(
        self,
        study,
        plan: "_Plan",
        study_run,
        jobs: list[tuple[int, list[str]]],
        *,
        job_idx: int,
        asked: list[int],
        locks: TrialLocks,
    ) -> list[str]:
        """Launch a batch of trials' jobs together, record each; returns the failure messages. Past
        max_failure_rate the sweep stops with the first failed job's own error (as the released plugin does)."""
        numbers, overrides = [n for n, _ in jobs], [tuple(o) for _, o in jobs]
        asked += numbers
        self.validate_batch_is_legal(overrides)
        if plan.inner_folds is not None:
            failed, returns, launch_error = inner_cv.run_trials(
                self._launch,
                study,
                jobs,
                k=plan.inner_folds,
                pruner=build_pruner(plan.pruner),
                trial_node=self.trial_node,
                job_idx=job_idx,
                metric=plan.metric,
                study_run=study_run,
            )
            for number in numbers:
                locks.release(number)
            self._check_failure_rate(failed, len(jobs), returns, launch_error)
            return failed
        launch_error: Optional[BaseException] = None
        try:
            returns = list(self.launcher.launch(overrides, initial_job_idx=job_idx))
        except Exception as err:  # e.g. a submitit job killed by the system: the whole batch failed, recorded as FAIL
            log.error("the launcher failed on trials %s: %s", numbers, err)
            returns, launch_error = [None] * len(jobs), err
        faults.point("optuna.trial")  # chaos test: the batch's jobs ran, their trials not yet told
        failures = [
            record_trial(
                study,
                number,
                ret,
                launch_error=launch_error,
                metric=plan.metric,
                n_objectives=len(plan.directions),
                study_run=study_run,
                log_traceback=self.pass_trial,
                from_epochs=self.pass_trial and len(plan.directions) > 1,
            )
            for number, ret in zip(numbers, returns)
        ]
        for number in numbers:  # told: nothing left to adopt (one descriptor per trial in flight, not per study)
            locks.release(number)
        failed = [f for f in failures if f]
        self._check_failure_rate(failed, len(jobs), returns, launch_error)
        return failed

    def _launch(self, overrides: list[tuple[str, ...]], job_idx: int) -> list:
        assert self.launcher is not None
        return list(self.launcher.launch(overrides, initial_job_idx=job_idx))

    def _check_failure_rate(self, failed: list[str], n_jobs: int, returns: list, launch_error) -> None:
        """Past max_failure_rate the sweep stops with the first failed job's own error (as the released plugin)."""
        if not failed or len(failed) / n_jobs <= self.max_failure_rate:
            return
        log.error(
            "%d of the %d trials of this batch failed, more than max_failure_rate=%s",
            len(failed),
            n_jobs,
            self.max_failure_rate,
        )
        if launch_error is not None:
            raise launch_error
        for ret in returns:
            if ret is not None:
                _ = ret.return_value  # a failed job's JobReturn raises its own exception, with its traceback
        raise SweepError(
            f"error: {len(failed)} of {n_jobs} trials failed (max_failure_rate={self.max_failure_rate}); "
            f"the first: {failed[0]}"
        )

    def _ask(self, study, space: SearchSpace):
        known = {t.number for t in study.get_trials(deepcopy=False)}
        try:
            return study.ask(fixed_distributions=space.distributions)
        except Exception:
            # ask() creates the trial before it samples: do not leave it RUNNING forever
            orphans = [
                t.number
                for t in study.get_trials(deepcopy=False)
                if t.number not in known and t.state.name == "RUNNING" and ATTR_OVERRIDES not in t.user_attrs
            ]
            fail_running(study, orphans)
            raise

    @staticmethod
    def _check_against_study(study, space: SearchSpace) -> None:
        """A resumed study keeps its distributions: Optuna refuses e.g. other choices for the same parameter."""
        from optuna.distributions import check_distribution_compatibility

        seen: dict[str, Any] = {}
        for t in study.get_trials(deepcopy=False):
            for name, dist in t.distributions.items():
                seen.setdefault(name, dist)
        for name, new in space.distributions.items():
            old = seen.get(name)
            if old is None:
                continue
            try:
                check_distribution_compatibility(old, new)
            except ValueError as err:
                raise SearchSpaceError(
                    f"{space.origin.get(name, 'search space')} '{name}': study '{study.study_name}' sampled it from "
                    f"{old}, the search space now says {new}: {err} Keep the study's distribution, or start a new "
                    "study (hydra.sweeper.study_name=<new name>)."
                ) from None

    def _study_run(self, study_name: str, plan: "_Plan"):
        assert self.config is not None
        uri = OmegaConf.select(self.config, "tracking.uri", default=None)
        experiment = OmegaConf.select(self.config, "experiment_name", default=None)
        if not self.mlflow or not uri or not experiment:
            return None
        from ttm_experiments.search.mlflow_study import StudyRun

        return StudyRun(
            uri,
            experiment,
            study_name,
            plan.storage_shown,
            {
                "optuna.direction": ",".join(plan.directions),
                "optuna.metric": plan.metric,
                "optuna.sampler": _sampler_name(plan.sampler),
                "optuna.pruner": plan.pruner,
                "sweep": str(self.config.hydra.sweep.dir),
            },
        )


def launch_command() -> str:
    """How this process was started, for the best trial's command of an app without an `entrypoint`: its
    script (`python sphere.py`) or console command, with the options that chose its config."""
    argv = sys.argv
    first = argv[0] if argv else "app"
    base = ["python", first] if first.endswith(".py") else [os.path.basename(first)]
    keep, take_next = [], False
    for arg in argv[1:]:
        if take_next:
            keep.append(arg)
            take_next = False
        elif arg in ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"):
            keep.append(arg)
            take_next = True
        elif arg.startswith(("--config-path=", "--config-name=", "--config-dir=")):
            keep.append(arg)
    import shlex

    return " ".join(shlex.quote(a) for a in base + keep)


def _sampler_name(sampler: Any) -> str:
    return str(getattr(sampler, "name", type(sampler).__name__))  # a per-trial seeded sampler names its kind


def _resumable(err: BaseException) -> bool:
    """A graceful stop (SIGTERM/SIGINT: exit status 75) or a second Ctrl-C: the jobs' states are resumable."""
    from ttm_experiments.training.signals import RESUMABLE

    return isinstance(err, KeyboardInterrupt) or (isinstance(err, SystemExit) and err.code == RESUMABLE)


def _explain(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if err.__cause__ is not None and str(err.__cause__).strip():  # e.g. OmegaConf's reason under Hydra's message
        lines.append(str(err.__cause__).strip().splitlines()[0])
    return " ".join(lines[:8])[:600] if lines else type(err).__name__
