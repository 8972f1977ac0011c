"""Hydra callbacks of `ttm-train` (configured under `hydra.callbacks` in conf/train.yaml): checks that run before
Hydra creates a run's or a sweep's folder, and the MLflow store prepared before a multirun's jobs start."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _writable_or_exit(config: DictConfig, folder_key: str) -> None:
    """`paths.runs_dir` and the folder Hydra is about to create (`folder_key`'s parent) must be writable: a
    one-line error and exit status 2 otherwise, before Hydra would fail on them with a traceback."""
    from ttm_experiments.errors import TrackingError
    from ttm_experiments.utils.files import writable_directory

    folders = [("paths.runs_dir", OmegaConf.select(config, "paths.runs_dir", default=None))]
    folder = OmegaConf.select(config, folder_key, default=None)
    if folder is not None:
        folders.append((folder_key, Path(str(folder)).parent))
    try:
        for key, path in folders:
            if path is not None:
                writable_directory(
                    Path(str(path)),
                    what=f"{key}",
                    error=TrackingError,
                    fix="paths.runs_dir=<a writable directory> (or hydra.run.dir). Nothing was run.",
                )
    except TrackingError as err:
        print(f"\nerror: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


class PrepareTracking(Callback):
    """Check the output folders before Hydra creates them; create the MLflow store and experiment once, before
    the jobs of a multirun start.

    Jobs that start together (joblib, submitit) on a fresh SQLite store would otherwise all run MLflow's
    schema migration at once, and all but one fail. An unreachable store stops the sweep before any job.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable_or_exit(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable_or_exit(config, "hydra.sweep.dir")
        uri = OmegaConf.select(config, "tracking.uri", default=None)
        experiment = OmegaConf.select(config, "experiment_name", default=None)
        if not uri or not experiment:
            return
        from ttm_experiments.tracking.console import quiet_mlflow
        from ttm_experiments.tracking.mlflow_tracker import MlflowTracker

        quiet_mlflow(OmegaConf.select(config, "hydra.verbose", default=False))  # before MLflow creates the store

        tracker = MlflowTracker(str(uri), str(experiment))
        log.info("MLflow store %s ready, experiment '%s' (id %s)", uri, experiment, tracker.experiment_id)
