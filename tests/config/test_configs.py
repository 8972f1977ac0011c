"""Every file in conf/ composes against the schema; unknown keys and wrong types fail at compose time."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.helpers.configs import REPO, compose_config
from ttm_experiments.config.spec import to_config

GROUPS = sorted(p for p in (REPO / "conf").iterdir() if p.is_dir() and p.name != "hydra")
# a file whose name starts with `_` is a base that options extend (conf/backbone/_pretrained.yaml), not an option
OPTIONS = [(g.name, f.stem) for g in GROUPS for f in sorted(g.rglob("*.yaml")) if not f.stem.startswith("_")]


def test_every_group_has_options():
    names = {g for g, _ in OPTIONS}
    assert {"backbone", "unfreeze", "dataset", "schedule", "optim", "tracking", "paths", "debug"} <= names


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_each_config_file_composes_and_validates(group: str, option: str, tmp_path: Path):
    cfg = compose_config([f"{group}={option}", f"paths.runs_dir={tmp_path}"])
    config = to_config(cfg)  # resolves interpolations into the typed schema
    assert config.backbone.context_length == config.dataset.window_length


def test_default_composition_matches_the_contract():
    config = to_config(compose_config())
    assert config.backbone.name == "ttm_1024"
    assert config.unfreeze.strategy.value == "pattern"
    assert config.dataset.name == "synthetic"
    assert config.schedule.name == "progressive"
    assert [s.train.value for s in config.schedule.stages] == ["head", "partial", "full"]
    assert config.tracking.uri == "sqlite:///runs/mlflow.db"
    assert config.unfreeze.pattern == config.backbone.block_pattern


def test_unknown_key_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["unfreeze.last_nn=3"])
    assert "last_nn" in str(err.value)


def test_unknown_group_option_fails():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["backbone=ttm_2048"])
    assert "ttm_2048" in str(err.value)


@pytest.mark.parametrize(
    "override,key",
    [("unfreeze.last_n=two", "last_n"), ("optim.lr=fast", "lr"), ("unfreeze.on_empty=ignore", "on_empty")],
)
def test_wrong_type_fails_naming_the_key(override: str, key: str):
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)) as err:
        compose_config([override])
    assert key in str(err.value) or key in str(err.value.__cause__)


def test_inspect_has_its_own_config_and_train_has_no_inspect_key(tmp_path: Path):
    assert "inspect" not in compose_config()
    config = to_config(compose_config(["inspect.format=json", "debug=tiny"], config_name="inspect"))
    assert config.inspect.format == "json" and config.backbone.name == "ttm_tiny"
    with pytest.raises(ConfigCompositionException, match="inspect.format"):  # an Enum: refused at compose time
        compose_config(["inspect.format=yaml"], config_name="inspect")
