"""Shared fixtures: compose the real config with Hydra, in a temporary runs dir, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ttm_experiments.cli import CONFIG_DIR, CONFIG_NAME  # noqa: E402  (registers the schema)

REPO = Path(__file__).resolve().parent.parent


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=CONFIG_NAME, overrides=list(overrides or []))


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def smoke(runs_dir: Path):
    """Compose a smoke config writing below a temporary runs dir; extra overrides are appended."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(["debug=smoke", f"paths.runs_dir={runs_dir}", *overrides])

    return make
