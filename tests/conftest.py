"""Shared fixtures: compose the real config with Hydra, in a temporary runs dir, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ttm_experiments.cli.common import CONFIG_DIR, CONFIG_NAME  # noqa: E402  (registers the schema)
from ttm_experiments.config.schema import (  # noqa: E402
    BackboneConf,
    BackboneKind,
    UnfreezeConf,
    UnfreezeStrategy,
)

REPO = Path(__file__).resolve().parent.parent


def compose_config(overrides: list[str] | None = None, config_name: str = CONFIG_NAME) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def backbone_conf(kind: str = "ttm", **fields) -> BackboneConf:
    """A backbone config built in Python; no dropout and a 16-unit head unless `fields` say otherwise."""
    fields = {"dropout": 0.0, "head_hidden": 16, "head_dropout": 0.0, **fields}
    return BackboneConf(name=f"test_{kind}", kind=BackboneKind(kind), block_pattern="", **fields)


TINY_TTM = {
    "context_length": 128,
    "patch_length": 16,
    "patch_stride": 16,
    "d_model": 16,
    "num_layers": 2,
    "adaptive_patching_levels": 2,
}  # 4 blocks, ~8k parameters


def unfreeze_rule(pattern: str | None = None, **fields) -> UnfreezeConf:
    """An unfreeze rule: the regex `pattern`, or the predecessor's depth rule when it is None."""
    strategy = UnfreezeStrategy.pattern if pattern is not None else UnfreezeStrategy.depth
    return UnfreezeConf(strategy=strategy, pattern=pattern, **fields)


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def smoke(runs_dir: Path):
    """Compose a smoke config writing below a temporary runs dir; extra overrides are appended."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(["debug=smoke", f"paths.runs_dir={runs_dir}", *overrides])

    return make
