"""The end of an Optuna sweep: the best trial as a ready-to-run command (checked by composing it), the study's
results (`optimization_results.yaml`, the printed summary) and the study's MLflow run."""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ttm_experiments.errors import TrackingError
from ttm_experiments.search import summary
from ttm_experiments.search.space import format_value, quote
from ttm_experiments.training.trial import ATTR_OVERRIDES, ATTR_RUN

log = logging.getLogger(__name__)

# task keys that do not change what a job trains: left out when the best trial is turned into a command
_NEUTRAL_KEYS = ("optimized_metric", "run_name")


def compose_job(hydra_context: HydraContext, config: DictConfig, overrides: list[str]) -> DictConfig:
    """The config a sweep job with `overrides` composes (without its `hydra` node)."""
    cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def compose_command(hydra_context: HydraContext, config: DictConfig, overrides: list[str]) -> DictConfig:
    """The config that `ttm-train <overrides>` composes (a single run, none of this sweep's hydra overrides)."""
    cfg = hydra_context.config_loader.load_configuration(
        config_name=config.hydra.job.config_name, overrides=list(overrides), run_mode=RunMode.RUN
    )
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@dataclass
class BestCommand:
    """Turns a trial's job overrides into the command that trains the same thing outside the sweep."""

    hydra_context: HydraContext
    config: DictConfig  # the sweep's config
    trial_node: Optional[str]  # the node the sweeper fills per trial (left out of the command)
    add_run_name: bool  # the sweeper named the trial's run: left out too
    entrypoint: str  # the command's name, e.g. ttm-train

    def command(self, overrides: list[str], tuned_in: Optional[str] = None) -> tuple[str, Optional[DictConfig]]:
        """A `ttm-train ...` command that trains what the trial trained, checked by composing both configs;
        with `tuned_in`, it records the study (`search.tuned_in`) so that ttm-report can tell its outer fold."""
        search_choice = None
        # a search path given on the command line is needed to compose the same config again
        keep = [str(ov) for ov in self.config.hydra.overrides.hydra if str(ov).startswith("hydra.searchpath=")]
        for ov in overrides:
            key = ov.split("=", 1)[0].lstrip("+~")
            if key == "hparams_search":
                search_choice = ov.split("=", 1)[1]
                continue
            if (key.startswith(("hydra.", "hydra/")) and not key.startswith("hydra.searchpath")) or (
                self.trial_node and key.startswith(self.trial_node + ".")
            ):
                continue
            if key == "run_name" and self.add_run_name:
                continue
            keep.append(ov)
        if tuned_in and self.trial_node:
            keep.append(f"{self.trial_node}.tuned_in={quote(tuned_in)}")
        plain = None
        try:
            job_cfg = compose_job(self.hydra_context, self.config, list(overrides))
            plain = compose_command(self.hydra_context, self.config, keep)
            if _task(job_cfg, self.trial_node) != _task(plain, self.trial_node) and search_choice:
                # the search space file sets task keys too: keep it, but run one job
                keep = [f"hparams_search={search_choice}", "hydra.mode=RUN", *keep]
                plain = compose_command(self.hydra_context, self.config, keep)
        except Exception as err:  # the command is still right in the common case; say that it was not checked
            log.warning("could not check the best command against the trial's config: %s", err)
        return " ".join([self.entrypoint, *map(shlex.quote, keep)]), plain


@dataclass
class StudyOutcome:
    """What a finished sweep found: the study's trials, its results and the best trial (or the Pareto front)."""

    study: Any
    trials: list
    metrics: list[str]
    directions: list[str]
    results: dict[str, Any]
    text: str  # the printed summary
    best: Any = None  # single objective: the best COMPLETE trial, if any
    command: Optional[str] = None
    best_cfg: Optional[DictConfig] = None
    importances: dict[str, float] | None = None
    front: list = field(default_factory=list)  # several objectives: the Pareto-optimal COMPLETE trials
    front_commands: dict[int, str] = field(default_factory=dict)
    pick: Any = None  # several objectives: the front's trial that `pick_from_front` chooses

    @property
    def metric(self) -> str:
        return ", ".join(self.metrics)

    @property
    def maximize(self) -> bool:
        return self.directions[0] == "maximize"


def finish_study(
    study,
    *,
    storage_shown: str,
    asked: list[int],
    metrics: list[str],
    directions: list[str],
    seconds: float,
    best_command: BestCommand,
    sweep_dir: Path,
    tuned_in: bool = True,
    released_keys_only: bool = False,
) -> StudyOutcome:
    """Print the summary, write `optimization_results.yaml` into the sweep folder and return the outcome.

    The file holds what the released plugin writes (`name: optuna`, and `best_params` and `best_value`, or for
    several objectives `solutions`: the Pareto front's params and values); with `released_keys_only` false it
    adds the study's bookkeeping (name, storage, counts, the best command)."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best, front, pick, command, best_cfg = None, [], None, None, None
    front_commands: dict[int, str] = {}
    results: dict[str, Any] = {"name": "optuna"}
    if len(directions) == 1:
        best = study.best_trial if complete else None  # Optuna's rule: the first of the best values
        if best is not None:
            overrides = _overrides(best)
            command, best_cfg = best_command.command(overrides, tuned_in=study.study_name if tuned_in else None)
            results.update(best_params=dict(best.params), best_value=float(best.value))
            log.info("Best parameters: %s", dict(best.params))
            log.info("Best value: %s", best.value)
    else:
        front = sorted(study.best_trials, key=lambda t: t.number) if complete else []
        pick = pick_from_front(front, directions)
        results["solutions"] = [{"params": dict(t.params), "values": [float(v) for v in t.values]} for t in front]
        log.info("Number of Pareto solutions: %d", len(front))
        for t in front:
            log.info("    Values: %s, Params: %s", t.values, dict(t.params))
            front_commands[t.number], cfg = best_command.command(
                _overrides(t), tuned_in=study.study_name if tuned_in else None
            )
            if t is pick:
                command, best_cfg = front_commands[t.number], cfg
    imp = summary.importances(study) if len(directions) == 1 else {}
    text = summary.format_summary(
        study.study_name,
        storage_shown,
        ", ".join(metrics),
        trials,
        asked,
        best,
        command,
        imp,
        front=front,
        front_commands=front_commands,
    )
    print(text, flush=True)
    log.info("study finished in %.0f s", seconds)
    if not released_keys_only:
        counts = summary.counts(trials)
        results.update(
            {
                "study_name": study.study_name,
                "storage": storage_shown,
                "direction": directions[0] if len(directions) == 1 else list(directions),
                "metric": metrics[0] if len(metrics) == 1 else list(metrics),
                "n_trials": len(trials),
                "trials_this_run": asked,
                **{f"n_{k}": v for k, v in counts.items()},
                "epochs_reported": sum(max(t.intermediate_values) for t in trials if t.intermediate_values),
            }
        )
        if best is not None:
            results.update(best_trial=best.number, best_command=command)
        if front:
            results["front_trials"] = [t.number for t in front]
            results["pareto_pick"] = pick.number
            results["best_command"] = command
        if imp:
            results["importances"] = imp
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
    return StudyOutcome(
        study=study,
        trials=trials,
        metrics=list(metrics),
        directions=list(directions),
        results=results,
        text=text,
        best=best,
        command=command,
        best_cfg=best_cfg,
        importances=imp,
        front=front,
        front_commands=front_commands,
        pick=pick,
    )


def pick_from_front(front: list, directions: list[str]):
    """The rule by which a multi-objective study names one trial (for its best command and the nested-CV
    report): scale each objective over the front to 0..1 (1 = the front's best value, 0 = its worst; an
    objective that does not vary counts 1), take the trial nearest to the ideal point (1, ..., 1) in Euclidean
    distance, and of equals the lowest trial number."""
    if not front:
        return None
    scaled = {t.number: [] for t in front}
    for i, direction in enumerate(directions):
        values = [t.values[i] for t in front]
        lo, hi = min(values), max(values)
        for t in front:
            if hi == lo:
                score = 1.0
            else:
                score = (t.values[i] - lo) / (hi - lo) if direction == "maximize" else (hi - t.values[i]) / (hi - lo)
            scaled[t.number].append(score)
    return min(front, key=lambda t: (sum((1 - v) ** 2 for v in scaled[t.number]) ** 0.5, t.number))


def _overrides(trial) -> list[str]:
    return list(trial.user_attrs.get(ATTR_OVERRIDES) or [f"{k}={format_value(v)}" for k, v in trial.params.items()])


def log_study(study_run, outcome: StudyOutcome) -> None:
    """The study's MLflow run: counts, the best trial (its value, command, config, run), importances, figures."""
    o = outcome
    tags = {"optuna.n_trials": str(len(o.trials)), "mlflow.note.content": "```\n" + o.text.strip() + "\n```"}
    metrics = {f"study/{k}": float(v) for k, v in summary.counts(o.trials).items()}
    texts = {"study/summary.txt": o.text.strip() + "\n"}
    figures = {}
    if len(o.directions) == 1:
        figures["study/history.png"] = summary.history_figure(o.trials, o.metric, o.maximize)
    else:
        figures["study/pareto.png"] = summary.pareto_figure(o.trials, o.front, o.metrics, o.directions)
        tags["pareto.trials"] = " ".join(str(t.number) for t in o.front)
        if o.pick is not None:
            tags["pareto.pick"] = str(o.pick.number)
            tags["best.command"] = o.command or ""
            texts["best/command.sh"] = (
                f"#!/bin/sh\n# trial {o.pick.number}, picked from the Pareto front of study '{o.study.study_name}' "
                f"(nearest to the ideal point, each objective scaled over the front)\n{o.command}\n"
            )
            if o.best_cfg is not None:
                texts["best/config.yaml"] = OmegaConf.to_yaml(o.best_cfg)
        front_runs = {t.number: t.user_attrs.get(ATTR_RUN) for t in o.front}
        run_tags = {
            run: {"optuna.pareto": "true", "optuna.pareto_pick": str(o.pick is not None and n == o.pick.number).lower()}
            for n, run in front_runs.items()
            if run
        }
        for t in o.front:
            run = t.user_attrs.get(ATTR_RUN)
            texts[f"pareto/trial-{t.number}.sh"] = (
                f"#!/bin/sh\n# Pareto-optimal trial {t.number} of study '{o.study.study_name}': "
                + ", ".join(f"{m} = {v:.6g}" for m, v in zip(o.metrics, t.values))
                + (f" (MLflow run {run})" if run else "")
                + f"\n{o.front_commands.get(t.number, '')}\n"
            )
            for m, v in zip(o.metrics, t.values):
                metrics[f"pareto/trial_{t.number}/{m.replace('/', '_')}"] = float(v)
    if o.best is not None:
        tags.update(
            {
                "best.trial": str(o.best.number),
                "best.command": o.command or "",
                "best.params": " ".join(f"{k}={v}" for k, v in o.best.params.items()),
            }
        )
        metrics["best/value"] = float(o.best.value)
        texts["best/command.sh"] = (
            f"#!/bin/sh\n# best trial {o.best.number} of study '{o.study.study_name}': "
            f"{o.metric} = {o.best.value:.6g}\n{o.command}\n"
        )
        if o.best_cfg is not None:
            try:
                texts["best/config.yaml"] = OmegaConf.to_yaml(o.best_cfg, resolve=True)
            except Exception as err:  # e.g. a ${hydra:...} interpolation outside a job: keep it unresolved
                log.warning("best config logged unresolved: %s", err)
                texts["best/config.yaml"] = OmegaConf.to_yaml(o.best_cfg)
        run = o.best.user_attrs.get(ATTR_RUN)
        if run:
            tags["best.run_id"] = str(run)
    if o.importances:
        metrics.update({f"importance/{k}": v for k, v in o.importances.items()})
        figures["study/importances.png"] = summary.importance_figure(o.importances)
    texts["study/results.yaml"] = OmegaConf.to_yaml(OmegaConf.create(o.results))
    texts["study/trials.csv"] = o.study.trials_dataframe().to_csv(index=False)
    if len(o.directions) > 1:
        for run, values in run_tags.items():  # the front's trials, found in the UI by tag
            for key, text in values.items():
                study_run.tracker.client.set_tag(run, key, text)
    try:
        study_run.finish(tags, metrics, texts, figures, [])
    except Exception as err:  # the results are safe elsewhere, but the sweep must not end as if all were recorded
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise TrackingError(
            f"the study's results are in its storage and in optimization_results.yaml, but its MLflow run could "
            f"not be finished: {first}. Fix: check tracking.uri, then rerun the same command (same "
            "hydra.sweep.dir: it asks no new trial and logs the study again)."
        ) from err


def _task(cfg: DictConfig, trial_node: Optional[str]) -> Any:
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    for key in (*_NEUTRAL_KEYS, trial_node):
        if key:
            data.pop(key, None)
    return data
