"""Shared fixtures: a smoke config below a temporary runs dir, the session's one trained smoke run, and
`mlflow server`s. Helpers (composing configs, data fixtures, servers) are in tests/helpers/."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tests.helpers.configs import compose_config  # noqa: E402
from tests.helpers.mlflow_server import MlflowServer  # noqa: E402
from tests.helpers.smoke_run import SmokeRun  # noqa: E402


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def smoke(runs_dir: Path):
    """Compose a smoke config writing below a temporary runs dir; extra overrides are appended."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(["debug=tiny", f"paths.runs_dir={runs_dir}", *overrides])

    return make


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """One finished `debug=tiny` run (its model registered as ppg-quality-test), trained once per session, for
    tests that only read it. A test that writes to a store (another run, a resume, a logged model) uses its own
    runs_dir instead."""
    return SmokeRun(tmp_path_factory.mktemp("smoke-run") / "runs")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """Start a real `mlflow server`: `mlflow_server(backend_uri=None, workers=1)` -> its http:// URI. The backend is a
    fresh SQLite file unless given (a PostgreSQL URL, say); each server stops at the end of the session."""
    with contextlib.ExitStack() as servers:

        def start(backend_uri: str | None = None, workers: int = 1) -> str:
            folder = tmp_path_factory.mktemp("mlflow-server")
            backend_uri = backend_uri or f"sqlite:///{folder}/server.db"
            return servers.enter_context(MlflowServer(backend_uri, folder, workers=workers)).uri

        yield start
