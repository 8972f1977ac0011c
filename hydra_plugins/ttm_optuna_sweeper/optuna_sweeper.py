"""The Hydra `Sweeper` class; it imports Optuna only when a sweep starts (Hydra scans this at every start)."""

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any = None,
        direction: Any = "maximize",
        storage: Optional[str] = None,
        study_name: Optional[str] = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: Optional[DictConfig] = None,
        search_space: Optional[DictConfig] = None,
        custom_search_space: Optional[str] = None,
        pruner: Any = "median",
        trial_node: Optional[str] = "search",
        job_validator: Optional[str] = None,
        mlflow: bool = True,
        entrypoint: str = "ttm-train",
    ) -> None:
        from ttm_experiments.search.sweeper import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(
            sampler,
            direction,
            storage,
            study_name,
            n_trials,
            n_jobs,
            params,
            search_space,
            custom_search_space,
            pruner,
            trial_node,
            job_validator,
            mlflow,
            entrypoint,
        )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.sweeper.sweep(arguments)
