"""What every command shares: the config path, schema registration, and clean user errors.

Only the CLI modules (`train`, `inspect`) see a DictConfig; they turn it into the typed config of
`config/schema.py` at once.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

from ttm_experiments.config.schema import register_schema
from ttm_experiments.errors import UserError
from ttm_experiments.tracking.console import quiet_mlflow


def _shipped_config_dir() -> str:
    """conf/ of the repository, which ships as the package `ttm_experiments.conf` (see setup.py).

    After `pip install` it lies in site-packages; an editable install maps it onto the repository's folder;
    a checkout used without installing (PYTHONPATH=.) has only the folder beside the package.
    """
    from importlib.util import find_spec

    spec = find_spec("ttm_experiments.conf")
    return str(Path(spec.origin).parent if spec else Path(__file__).resolve().parents[2] / "conf")


CONFIG_DIR = _shipped_config_dir()
CONFIG_NAME = "train"
T = TypeVar("T")

log = logging.getLogger("ttm_experiments")

register_schema()
# HF_HUB_OFFLINE is left to the user (the Makefile, CI and the tests set it): a notebook importing the package can
# still download; offline, a cached snapshot is used and a missing one is a clear error (models/hub.py)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def user_errors_exit(fn: Callable[..., T]) -> Callable[..., T]:
    """Print a UserError as one clear message (no traceback wall) and exit with status 2.

    In a multirun the error is re-raised instead, so the launcher or the Optuna sweeper records the
    job as failed and the sweep goes on.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        quiet_mlflow(_hydra_verbose())
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if _in_multirun():
                raise
            print(f"\nerror: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def _hydra_verbose() -> object:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().verbose if HydraConfig.initialized() else False


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
