"""The Hydra `Sweeper` class; it imports Optuna only when a sweep starts (Hydra scans this at every start).

Its arguments are the keys of the `hydra/sweeper: optuna` node (config.py), in the released plugin's order
first; each has the node's default, so a config that names only `_target_` gets a working sweeper."""

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any = None,
        direction: Any = "minimize",
        storage: Optional[Any] = None,
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
        from ttm_experiments.search.sweeper import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(
            sampler=sampler,
            direction=direction,
            storage=storage,
            study_name=study_name,
            n_trials=n_trials,
            n_jobs=n_jobs,
            max_failure_rate=max_failure_rate,
            search_space=search_space,
            custom_search_space=custom_search_space,
            params=params,
            pruner=pruner,
            trial_node=trial_node,
            job_validator=job_validator,
            mlflow=mlflow,
            entrypoint=entrypoint,
        )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        return self.sweeper.sweep(arguments)
