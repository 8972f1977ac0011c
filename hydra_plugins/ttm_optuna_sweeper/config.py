"""The `hydra/sweeper: optuna` config node and its samplers (`hydra/sweeper/sampler: tpe, random, grid, ...`).

The keys are those of `hydra-optuna-sweeper` 1.2 (direction, n_trials, n_jobs, study_name, storage, sampler,
params, search_space, custom_search_space), plus:

- `pruner`: `median` (default), `hyperband`, `none`, or a mapping with `type` and the pruner's arguments,
  e.g. `{type: median, n_startup_trials: 3, n_warmup_steps: 4}` (steps are epochs counted across stages);
  also `percentile`, `successive_halving`, `threshold`;
- `trial_node`: the config node through which each job gets its trial (`search`: study_name, storage,
  trial_number, pruner, direction); null passes nothing (then nothing is pruned);
- `job_validator`: a function called on each probe config of the search space before any trial runs;
- `mlflow`: give the study a parent run in MLflow (`tracking.uri`, `experiment_name`) with its trials below;
- `entrypoint`: the command printed to reproduce the best trial.

Samplers are plain `_target_` nodes, so a search space may set any argument of the Optuna sampler.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.ttm_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # the sampler and pruner are built by the sweeper itself, not by Hydra's recursive instantiation
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])

    sampler: Any = MISSING
    # minimize | maximize (the train job returns optimized_metric, val/auroc by default: maximize)
    direction: Any = "maximize"
    # RDB URL (sqlite:///..., postgresql://...) or a journal file path; null = the default below
    storage: Optional[str] = "sqlite:///${paths.runs_dir}/optuna.db"
    # the same name on the same storage resumes the study; null = a new study with a generated name
    study_name: Optional[str] = None
    # trials this sweep adds to the study; a rerun with the same hydra.sweep.dir (after a kill) resumes the trials
    # left RUNNING and asks only the ones still missing
    n_trials: int = 20
    # trials launched at once (each batch goes to hydra/launcher: basic runs them one after another)
    n_jobs: int = 1
    # search space in Hydra's override syntax: interval(...), tag(log, interval(...)), range(...), choice(...)
    params: Optional[Dict[str, Any]] = None
    # deprecated form of params ({type, low, high, log, step, choices}), still read
    search_space: Optional[Dict[str, Any]] = None
    # dotted path of a function (cfg, trial) -> None that suggests more parameters
    custom_search_space: Optional[str] = None
    pruner: Any = "median"
    trial_node: Optional[str] = "search"
    job_validator: Optional[str] = "ttm_experiments.search.space.validate_train_config"
    mlflow: bool = True
    entrypoint: str = "ttm-train"


SAMPLERS: Dict[str, Dict[str, Any]] = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    # the grid is filled from params at run time (every parameter must be discrete)
    "grid": {"_target_": "optuna.samplers.GridSampler", "_partial_": True, "seed": None},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None},
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": None},
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="ttm_optuna_sweeper")
for _name, _node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="ttm_optuna_sweeper")
