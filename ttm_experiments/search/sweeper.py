"""The Optuna sweeper behind `hydra/sweeper: optuna` (registered by `hydra_plugins.ttm_optuna_sweeper`).

It checks the search space against the config before anything runs, creates or resumes the study
(`load_if_exists`), takes over the trials a dead sweeper left RUNNING (`adopt`), launches `n_jobs` trials at
a time through the configured launcher (each job reports to the storage itself and prunes itself, see
`training/trial.py`; trial n runs in `<hydra.sweep.dir>/<n>`), reads every trial's state back from the storage (a
failed job is a FAIL trial and the study goes on), and ends with the best trial as a ready-to-run command.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ttm_experiments.config.schema import parse_metric
from ttm_experiments.errors import ConfigError, UserError
from ttm_experiments.search import nested
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
from ttm_experiments.tracking.optuna_storage import display_storage, normalize_storage, open_storage, pruner_spec
from ttm_experiments.training.trial import ATTR_OVERRIDES, ATTR_PARENT_RUN
from ttm_experiments.utils import faults
from ttm_experiments.utils.locks import holder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Plan:
    """A sweep's settings once checked: what `_sweep` and its steps share."""

    space: SearchSpace
    direction: str
    pruner: str
    storage_url: str
    metric: str
    sampler: Any
    n_trials: int
    sweep_dir: Path  # absolute: trial n runs in <sweep_dir>/<n>

    @property
    def storage_shown(self) -> str:
        return display_storage(self.storage_url)


class OptunaSweeperImpl(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Optional[str],
        study_name: Optional[str],
        n_trials: int,
        n_jobs: int,
        params: Optional[DictConfig] = None,
        search_space: Optional[DictConfig] = None,
        custom_search_space: Optional[str] = None,
        pruner: Any = "median",
        trial_node: Optional[str] = "search",
        job_validator: Optional[str] = None,
        mlflow: bool = True,
        entrypoint: str = "ttm-train",
    ) -> None:
        self.sampler_conf = sampler
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
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

    # -- configuration ----------------------------------------------------------------------------------------
    def _direction(self) -> str:
        value = self.direction
        if isinstance(value, (list, tuple, ListConfig)):
            if len(value) != 1:
                raise ConfigError(
                    f"hydra.sweeper.direction={list(value)}: the train job returns one objective, "
                    "so give one direction (minimize or maximize)"
                )
            value = value[0]
        text = str(getattr(value, "name", value)).lower()
        if text not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction={value!r} must be minimize or maximize")
        return text

    def _storage_url(self) -> str:
        assert self.config is not None
        storage = self.storage
        if not storage:
            runs_dir = OmegaConf.select(self.config, "paths.runs_dir", default="runs")
            storage = f"sqlite:///{runs_dir}/optuna.db"
            log.info(
                "hydra.sweeper.storage is null: the study lives in %s (jobs in other processes must reach "
                "it, so an in-memory study is never used)",
                storage,
            )
        return normalize_storage(storage)

    def _sampler(self, space: SearchSpace):
        import optuna
        from hydra.utils import instantiate

        conf = self.sampler_conf
        sampler = instantiate(conf) if isinstance(conf, (DictConfig, dict)) else conf
        if sampler is None:
            return optuna.samplers.TPESampler(), None
        size, grid_space = None, None
        if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
            grid_space = {name: grid(name, d) for name, d in space.distributions.items()}
            size = math.prod(len(v) for v in grid_space.values()) if grid_space else 1
            sampler = sampler(grid_space)
        if not isinstance(sampler, optuna.samplers.BaseSampler):
            raise ConfigError(f"hydra.sweeper.sampler builds a {type(sampler).__name__}, not an Optuna sampler")
        seed = conf.get("seed") if isinstance(conf, (DictConfig, dict)) else None
        # TPE and random search draw from their generator trial after trial: rebuilt per trial (search/adopt.py),
        # a rerun samples what the uninterrupted study did. Grid (its order) and QMC (its scramble) need one seed
        # for the whole study, and their trial n depends only on n and the storage: they resume as they are.
        if seed is not None and type(sampler) in (optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
            sampler = seeded_per_trial(lambda trial_seed: instantiate(conf, seed=trial_seed), int(seed))
        return sampler, size

    def _trial_node_ok(self) -> bool:
        assert self.config is not None
        if not self.trial_node:
            return False
        node = OmegaConf.select(self.config, self.trial_node, default=None)
        if not isinstance(node, DictConfig) or "trial_number" not in node:
            log.warning(
                "the config has no %s.trial_number: jobs cannot find their trial, so nothing is pruned "
                "(set hydra.sweeper.trial_node to the node that holds study_name, storage, trial_number, "
                "pruner and direction)",
                self.trial_node,
            )
            return False
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
    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._sweep(arguments)
        except SweepError:
            raise
        except UserError as err:  # a setting the user can fix: the message, without a traceback
            raise SweepError(f"error: {err}") from None

    def _plan(self, arguments: list[str]) -> "_Plan":
        """Everything the sweep needs, checked before the study is touched: space, direction, storage, sampler."""
        cfg = self.config
        space = parse(self.params, self.search_space, arguments, int_keys=functools.partial(_is_int_key, cfg))
        # fixed in hydra.sweeper.params: not in the sweep's own config, which the study is bound to
        in_params = {k: v for k, v in space.fixed.items() if space.origin.get(k) == "hydra.sweeper.params"}
        nested.refuse_swept_fold(space.distributions, in_params)
        if not space.distributions and not self.custom_search_space:
            raise SearchSpaceError(
                "the search space is empty: set hydra.sweeper.params (e.g. optim.lr: "
                "tag(log, interval(1e-5, 3e-3))) or use hparams_search=<name>"
            )
        direction, pruner, storage_url = self._direction(), pruner_spec(self.pruner), self._storage_url()
        self.pass_trial = self._trial_node_ok()
        self.add_run_name = OmegaConf.select(cfg, "run_name", default="missing") is None and not any(
            k.lstrip("+~") == "run_name" for k in (*space.fixed, *space.distributions)
        )
        metric = str(OmegaConf.select(cfg, "optimized_metric", default="objective"))
        wanted = parse_metric(metric).direction if "/" in metric else direction  # config/schema.py: the one rule
        if wanted != direction:
            raise ConfigError(
                f"optimized_metric={metric} is to {wanted}, but hydra.sweeper.direction={direction}. "
                f"Fix: hydra.sweeper.direction={wanted}, or another optimized_metric."
            )
        sampler, grid_size = self._sampler(space)
        n_trials = self.n_trials if grid_size is None else min(self.n_trials, grid_size)
        if n_trials < 1 or self.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials} and n_jobs={self.n_jobs} must be >= 1")
        subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False).get("subdir")
        if subdir != "${hydra.job.num}":
            log.warning(
                "hydra.sweep.subdir=%s is not used by the Optuna sweeper: trial n runs in <hydra.sweep.dir>/n, "
                "so that a rerun finds a killed trial's job directory",
                subdir,
            )
        return _Plan(
            space=space,
            direction=direction,
            pruner=pruner,
            storage_url=storage_url,
            metric=metric,
            sampler=sampler,
            n_trials=n_trials,
            sweep_dir=Path(str(cfg.hydra.sweep.dir)).expanduser().resolve(),
        )

    def _open_study(self, plan: "_Plan"):
        """Create or resume the study; a resumed one must keep its direction and distributions."""
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(
                study_name=self.study_name,
                storage=open_storage(plan.storage_url),
                sampler=plan.sampler,
                direction=plan.direction,
                load_if_exists=True,
            )
            if study.direction.name.lower() != plan.direction:
                raise ConfigError(
                    f"study '{study.study_name}' in {plan.storage_shown} is to "
                    f"{study.direction.name.lower()}, but hydra.sweeper.direction={plan.direction}"
                )
            if not study.metric_names:
                study.set_metric_names([plan.metric])
        self._check_against_study(study, plan.space)
        nested.bind_study(study, nested.outer_fold(self.config), plan.storage_shown)
        before = len(study.get_trials(deepcopy=False))
        if before:
            log.info("study '%s' in %s resumes with %d trials", study.study_name, plan.storage_shown, before)
            if hasattr(plan.sampler, "reseed_rng"):
                plan.sampler.reseed_rng()  # a seeded sampler would otherwise repeat the first run's trials
        study.set_user_attr("optimized_metric", plan.metric)
        return study

    def _sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        t0 = time.perf_counter()
        plan = self._plan(arguments)
        self.validate(
            plan.space, self._search_overrides("validation", plan.storage_url, 0, plan.pruner, plan.direction)
        )
        study = self._open_study(plan)
        log.info(
            "Optuna study '%s' (%s): %d trials, %d at a time, sampler %s, pruner %s, %s %s",
            study.study_name,
            plan.storage_shown,
            plan.n_trials,
            self.n_jobs,
            _sampler_name(plan.sampler),
            plan.pruner,
            plan.direction,
            plan.metric,
        )
        log.info("search space: %s", ", ".join(f"{k}: {v}" for k, v in plan.space.distributions.items()))
        study_run = self._study_run(
            study.study_name, plan.storage_shown, plan.direction, plan.metric, plan.sampler, plan.pruner
        )
        asked: list[int] = []
        failures: list[str] = []
        locks = TrialLocks()
        try:
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
            job_idx = 0
            finish_adopted(
                study,
                storage_url=plan.storage_url,
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
            if _resumable(err):  # a graceful stop: the jobs saved their state; the same command resumes them
                log.warning("trials %s stay RUNNING: rerun the same command to resume them", locks.held())
            else:
                fail_running(study, plan.storage_url, asked)
            if study_run is not None:
                study_run.end("KILLED")
            raise
        finally:
            locks.release_all()
        commands = BestCommand(self.hydra_context, self.config, self.trial_node, self.add_run_name, self.entrypoint)
        outcome = finish_study(
            study,
            storage_url=plan.storage_url,
            asked=asked,
            metric=plan.metric,
            direction=plan.direction,
            seconds=time.perf_counter() - t0,
            best_command=commands,
            sweep_dir=Path(str(self.config.hydra.sweep.dir)),
        )
        if study_run is not None:
            log_study(study_run, outcome)
        results = outcome.results
        if asked and len(failures) == len(asked):
            raise SweepError(f"all {len(asked)} trials of this run failed; the first: {failures[0]}")
        return results

    def _ask_job(self, study, plan: "_Plan", study_run, locks: TrialLocks) -> tuple[int, list[str]]:
        """A new trial and its job: its sampled overrides, where to report, its run name and job directory (whose
        lock this sweeper holds until the trial is told: a rerun takes over only trials whose sweeper is gone)."""
        trial = self._ask(study, plan.storage_url, plan.space)
        job_dir = plan.sweep_dir / str(trial.number)
        if not locks.take(trial.number, job_dir):
            fail_running(study, plan.storage_url, [trial.number])
            raise SweepError(
                f"error: the job directory {job_dir} of trial {trial.number} is in use by process "
                f"{holder(job_dir)} (another study in the same hydra.sweep.dir?). Fix: give this "
                "study its own hydra.sweep.dir"
            )
        if self.custom_search_space:
            from hydra.utils import get_method

            get_method(self.custom_search_space)(self.config, trial)
        job = plan.space.overrides(trial.params) + self._search_overrides(
            study.study_name, plan.storage_url, trial.number, plan.pruner, plan.direction
        )
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
        """Launch a batch of trials' jobs together, record each; returns the failure messages."""
        numbers, overrides = [n for n, _ in jobs], [tuple(o) for _, o in jobs]
        asked += numbers
        self.validate_batch_is_legal(overrides)
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
                storage_url=plan.storage_url,
                launch_error=launch_error,
                metric=plan.metric,
                study_run=study_run,
            )
            for number, ret in zip(numbers, returns)
        ]
        for number in numbers:  # told: nothing left to adopt (one descriptor per trial in flight, not per study)
            locks.release(number)
        return [f for f in failures if f]

    def _ask(self, study, storage_url: str, space: SearchSpace):
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
            fail_running(study, storage_url, orphans)
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

    def _study_run(self, study_name: str, storage: str, direction: str, metric: str, sampler, pruner: str):
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
            storage,
            {
                "optuna.direction": direction,
                "optuna.metric": metric,
                "optuna.sampler": _sampler_name(sampler),
                "optuna.pruner": pruner,
                "sweep": str(self.config.hydra.sweep.dir),
            },
        )


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


def _is_int_key(cfg: DictConfig, key: str) -> bool:
    try:
        value = OmegaConf.select(cfg, key, default=None)
    except OmegaConfBaseException:  # an interpolation that cannot resolve here: not known to be an int
        return False
    return isinstance(value, int) and not isinstance(value, bool)
