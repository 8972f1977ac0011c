"""The `hydra/sweeper: optuna` config node and its samplers (`hydra/sweeper/sampler: tpe, random, grid, ...`).

For any Hydra app the node is the released `hydra-optuna-sweeper` 1.3's: the same keys with the same defaults
(direction minimize, storage null = an in-memory study, n_trials 20, n_jobs 2, max_failure_rate 0.0, params,
the deprecated search_space, custom_search_space), and the same meaning. The keys this sweeper adds:

- `pruner`: `median`, `percentile`, `hyperband`, `successive_halving`, `threshold`, `wilcoxon`, `none` (null), or a
  mapping with `type` (or `_target_: optuna.pruners.X`) and the pruner's arguments; it acts through jobs that
  report to their trial (`trial_node`), so it needs one;
- `trial_node`: the config node through which each job gets its trial (study_name, storage, trial_number, pruner,
  direction) and reports to it; a null storage then means a SQLite file under `paths.runs_dir` (the jobs, maybe
  in other processes, must reach the study);
- `job_validator`: a function called on each probe config of the search space before any trial runs;
- `mlflow`: give the study a parent run in MLflow (`tracking.uri`, `experiment_name`) with its trials below;
- `entrypoint`: the command printed to reproduce the best trial (null: the command that started the sweep).

They stay off (null) for any app, except an app whose config has ttm-train's schema (ttm-train itself): there
null means ttm-train's setting (trial_node `search`, its config check, MLflow on, `ttm-train`; see
`ttm_experiments.search.sweeper.TTM_TRAIN`). This package's `hparams_search` configs set the rest (direction,
pruner, failures that do not stop a study) explicitly.

Each sampler node carries its Optuna constructor's arguments, so `hydra.sweeper.sampler.n_startup_trials=5`
works; an argument left null takes Optuna's default. So does each pruner node (`+hydra/sweeper/pruner=median
hydra.sweeper.pruner.n_warmup_steps=4`).
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Direction(Enum):
    minimize = 1
    maximize = 2


@dataclass
class SamplerConfig:
    _target_: str = MISSING


@dataclass
class TPESamplerConfig(SamplerConfig):
    """optuna.samplers.TPESampler with the released plugin's choices (independent TPE, no constant liar)."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    group: bool = False
    constant_liar: bool = False
    # deprecated by Optuna 4.x (null: Optuna's default, which is the released value)
    consider_prior: Optional[bool] = None
    prior_weight: Optional[float] = None
    consider_magic_clip: Optional[bool] = None
    consider_endpoints: Optional[bool] = None
    warn_independent_sampling: Optional[bool] = None


@dataclass
class MultivariateTPESamplerConfig(TPESamplerConfig):
    """Optuna 5's TPE: a joint model of all parameters (`multivariate`, `group` for conditional spaces) and the
    constant liar, which keeps parallel workers (n_jobs > 1) from sampling the same point."""

    multivariate: bool = True
    group: bool = False
    constant_liar: bool = True


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class GridSamplerConfig(SamplerConfig):
    """The grid is filled from the search space at run time (every parameter must be discrete)."""

    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    x0: Optional[Dict[str, Any]] = None
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    popsize: Optional[int] = None
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = None
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class MOTPESamplerConfig(TPESamplerConfig):
    """The released `motpe`: Optuna >= 4 has no MOTPESampler; its TPESampler is the multi-objective TPE."""


@dataclass
class QMCSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.QMCSampler"
    seed: Optional[int] = None
    qmc_type: str = "sobol"
    scramble: bool = False


@dataclass
class GPSamplerConfig(SamplerConfig):
    """Gaussian-process Bayesian optimisation: few trials on a continuous, low-dimensional space."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.ttm_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # the sampler is built by the sweeper itself (the grid needs the search space)
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])

    sampler: SamplerConfig = MISSING
    # minimize | maximize, or a list of them (multi-objective)
    direction: Any = Direction.minimize
    # an Optuna storage URL (sqlite:///..., postgresql://...) or a journal file path; null: in memory (with a
    # trial_node: a SQLite file under paths.runs_dir)
    storage: Optional[Any] = None
    # the same name on the same storage resumes the study; null = a new study with a generated name
    study_name: Optional[str] = None
    # trials this sweep adds to the study
    n_trials: int = 20
    # trials launched at once (the batch goes to the launcher)
    n_jobs: int = 2
    # the share of failed trials in a batch above which the sweep stops with the jobs' error
    max_failure_rate: float = 0.0
    # deprecated form of params ({type, low, high, log, step, choices}): used only without params
    search_space: Optional[Dict[str, Any]] = None
    # search space in Hydra's override syntax: interval(...), tag(log, interval(...)), range(...), choice(...)
    params: Optional[Dict[str, str]] = None
    # dotted path of a function (cfg, trial) -> None that suggests more parameters
    custom_search_space: Optional[str] = None

    # the keys this sweeper adds (module docstring)
    pruner: Any = None
    trial_node: Optional[str] = None
    job_validator: Optional[str] = None
    mlflow: Optional[bool] = None
    entrypoint: Optional[str] = None


@dataclass
class PrunerConfig:
    """A `hydra/sweeper/pruner` node: `type` names the pruner (tracking/optuna_storage.py), the rest are the
    arguments of its Optuna constructor."""

    type: str = MISSING


@dataclass
class MedianPrunerConfig(PrunerConfig):
    type: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConfig(MedianPrunerConfig):
    type: str = "percentile"
    percentile: float = 25.0  # Optuna has no default: keep trials in the top 75 %


@dataclass
class HyperbandPrunerConfig(PrunerConfig):
    type: str = "hyperband"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class SuccessiveHalvingPrunerConfig(PrunerConfig):
    type: str = "successive_halving"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class ThresholdPrunerConfig(PrunerConfig):
    type: str = "threshold"
    lower: Optional[float] = None
    upper: Optional[float] = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class WilcoxonPrunerConfig(PrunerConfig):
    """optuna.pruners.WilcoxonPruner: for a k-fold objective (`search.inner_folds`; step j = inner fold j), it
    prunes a trial whose folds so far lose to the best trial's same folds (one-sided signed-rank test). With n
    folds compared the smallest p-value is 2**-n: after 2 folds 0.25, so Optuna's p_threshold 0.1 needs 4."""

    type: str = "wilcoxon"
    p_threshold: float = 0.1
    n_startup_steps: int = 2


@dataclass
class NopPrunerConfig(PrunerConfig):
    type: str = "none"


PRUNERS = {
    "median": MedianPrunerConfig,
    "percentile": PercentilePrunerConfig,
    "hyperband": HyperbandPrunerConfig,
    "successive_halving": SuccessiveHalvingPrunerConfig,
    "threshold": ThresholdPrunerConfig,
    "wilcoxon": WilcoxonPrunerConfig,
    "none": NopPrunerConfig,
}

SAMPLERS = {
    "tpe": TPESamplerConfig,
    "tpe_multivariate": MultivariateTPESamplerConfig,
    "random": RandomSamplerConfig,
    "grid": GridSamplerConfig,
    "cmaes": CmaEsSamplerConfig,
    "nsgaii": NSGAIISamplerConfig,
    "motpe": MOTPESamplerConfig,
    "qmc": QMCSamplerConfig,
    "gp": GPSamplerConfig,
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="ttm_optuna_sweeper")
for _name, _node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="ttm_optuna_sweeper")
# not in the node's defaults (no pruner unless asked): `+hydra/sweeper/pruner=median`, or `- /hydra/sweeper/pruner:
# median` in a config's defaults list
for _name, _node in PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="ttm_optuna_sweeper")
