"""Hydra callbacks for multiruns (configured under `hydra.callbacks` in conf/train.yaml)."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class PrepareTracking(Callback):
    """Create the MLflow store and experiment once, before the jobs of a multirun start.

    Jobs that start together (joblib, submitit) on a fresh SQLite store would otherwise all run MLflow's
    schema migration at once, and all but one fail. An unreachable store stops the sweep before any job.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        uri = OmegaConf.select(config, "tracking.uri", default=None)
        experiment = OmegaConf.select(config, "experiment_name", default=None)
        if not uri or not experiment:
            return
        from ttm_experiments.tracking.console import quiet_mlflow
        from ttm_experiments.tracking.mlflow_tracker import MlflowTracker

        quiet_mlflow(OmegaConf.select(config, "hydra.verbose", default=False))  # before MLflow creates the store

        tracker = MlflowTracker(str(uri), str(experiment))
        log.info("MLflow store %s ready, experiment '%s' (id %s)", uri, experiment, tracker.experiment_id)
