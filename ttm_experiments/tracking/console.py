"""MLflow's console chatter: off by default for every command, on with `hydra.verbose=mlflow`."""

from __future__ import annotations

import logging
import os

QUIET_LOGGERS = ("mlflow", "alembic")


def quiet_mlflow(verbose: object) -> None:
    """MLflow's own console chatter off (its INFO lines, alembic's migration lines, the "View run at" URLs on a
    server), unless `hydra.verbose` names `mlflow` (or is true): then MLflow logs at DEBUG. A level already set
    in MLFLOW_LOGGING_LEVEL is kept. The CLI calls this; library code never sets log levels."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(verbose):
        verbose = OmegaConf.to_container(verbose)
    names = [verbose] if isinstance(verbose, str) else list(verbose) if isinstance(verbose, (list, tuple)) else []
    if verbose is True or any(str(n).split(".")[0] == "mlflow" for n in names):
        os.environ["MLFLOW_LOGGING_LEVEL"] = "DEBUG"  # read when mlflow is first imported
        logging.getLogger("mlflow").setLevel(logging.DEBUG)
        return
    level = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING").upper()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts: 100%|..."
    for name in QUIET_LOGGERS:  # when mlflow is imported already (a multirun's callback opened the store)
        logging.getLogger(name).setLevel(level if isinstance(logging.getLevelName(level), int) else logging.WARNING)
