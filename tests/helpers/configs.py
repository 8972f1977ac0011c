"""The real config, composed with Hydra as the commands compose it, and small backbones built in Python."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ttm_experiments.cli.common import CONFIG_DIR, CONFIG_NAME  # registers the schema
from ttm_experiments.config.schema import BackboneConf, BackboneKind, UnfreezeConf, UnfreezeStrategy

REPO = Path(__file__).resolve().parents[2]


def compose_config(overrides: list[str] | None = None, config_name: str = CONFIG_NAME) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def compose_report(overrides: list[str]) -> DictConfig:
    """`ttm-report`'s own config (conf/report.yaml), as the command composes it."""
    return compose_config(overrides, config_name="report")


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
