"""One source of truth per setting: the schema holds the defaults and the YAML files state only what differs;
presets extend a base file; closed choices are Enums refused at compose time; a dataset option names its loader.

`tests/config/test_configs.py` composes every option of every group; here: the files it does not compose (the
top-level configs, the `_` base files), the values `ttm-train --cfg job` printed before the defaults moved into
the schema, and the dataset variant `butppg_green`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tests.helpers.configs import REPO, compose_config
from ttm_experiments.config.schema import (
    AmpMode,
    DatasetLoader,
    MissingRecords,
    NonFinite,
    TrainConfig,
    parse_amp,
)
from ttm_experiments.config.spec import to_config
from ttm_experiments.errors import ConfigError

CONF = REPO / "conf"
TTM_BLOCKS = r"encoder\.mlp_mixer_encoder\.mixers\.\d+\.mixer_layers\.\d+"

# `ttm-train --cfg job` before the defaults moved from the YAML files into the schema (recorded at 9d69823)
BEFORE_DEFAULT = {
    "seed": 0,
    "experiment_name": "ttm-ppg-quality",
    "optimized_metric": "val/auroc",
    "optim": {
        "lr": 0.001,
        "ssl_lr": 0.001,
        "weight_decay": 0.01,
        "batch_size": 64,
        "eval_batch_size": 256,
        "layer_decay": 1.0,
        "pretrained_backbone_lr_scale": 0.1,
        "pretrained_layer_decay": 0.8,
        "warmup_frac": 0.1,
        "grad_clip": 1.0,
        "loss": "weighted_ce",
        "focal_gamma": 2.0,
        "balanced_sampler": False,
    },
    "trainer": {  # amp printed 'False' then (a YAML boolean in a str node), 'false' now: both are AmpMode.off
        "device": "auto",
        "compile": False,
        "num_threads": 0,
        "progress": True,
        "collapse_threshold": 0.05,
        "collapse_action": "warn",
        "max_batches": 0,
        "max_epochs_per_stage": 0,
        "stage_cache": True,
    },
    "tracking": {
        "uri": "sqlite:///${paths.runs_dir}/mlflow.db",
        "log_system_metrics": False,
        "system_metrics_interval_s": 10.0,
        "register_model": None,
    },
    "paths": {
        "runs_dir": "runs",
        "cache_dir": "${paths.runs_dir}/cache",
        "stage_cache_dir": "${paths.runs_dir}/stage_cache",
    },
    "unfreeze": {
        "strategy": "pattern",
        "last_n": 2,
        "pattern": "${backbone.block_pattern}",
        "keywords": ["layer", "block"],
        "max_dots": 1,
        "on_empty": "error",
        "on_nested": "error",
        "frozen_mode": "eval",
    },
}
TTM_1024 = {
    "name": "ttm_1024",
    "kind": "ttm",
    "context_length": 1024,
    "patch_length": 64,
    "patch_stride": 64,
    "d_model": 192,
    "num_layers": 2,
    "adaptive_patching_levels": 3,
    "expansion_factor": 2,
    "dropout": 0.2,
    "num_attention_heads": 4,
    "ffn_dim": 256,
    "block_pattern": TTM_BLOCKS,
    "pretrained_path": None,
    "revision": None,
    "head_hidden": 64,
    "head_dropout": 0.2,
    "scale_features": False,  # changed on purpose: measured in docs/results.md (amplitude and units)
    "fast_dropout": True,
    # added: the head choice; its default is the head every backbone had before (docs/recipes.md)
    "head": "suite",
    "tspulse_head": {
        "gated_attention_activation": "softmax",
        "decoder_mode": "common_channel",
        "head_reduce_d_model": None,
        "channel_virtual_expand_scale": 1,
        "mask_ratio": None,
    },
    "mantis_version": None,  # added: only kind=mantis uses it (models/mantis.py)
}
PUBLIC = {"dropout": None, "head_dropout": None}
BEFORE_BACKBONES = {
    "ttm_1024": TTM_1024,
    "ttm_r1_1024": {
        **TTM_1024,
        **PUBLIC,
        "name": "ttm_r1_1024",
        "pretrained_path": "ibm-granite/granite-timeseries-ttm-r1",
        "revision": "1024_96_v1",
    },
    "ttm_512": {**TTM_1024, "name": "ttm_512", "context_length": 512},
    "ttm_r2_512": {
        **TTM_1024,
        **PUBLIC,
        "name": "ttm_r2_512",
        "context_length": 512,
        "pretrained_path": "ibm-granite/granite-timeseries-ttm-r2",
    },
    "ttm_r2_1536": {
        **TTM_1024,
        **PUBLIC,
        "name": "ttm_r2_1536",
        "context_length": 1536,
        "patch_length": 128,
        "patch_stride": 128,
        "d_model": 384,
        "pretrained_path": "ibm-granite/granite-timeseries-ttm-r2",
        "revision": "1536-96-r2",
    },
}


def plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=False, enum_to_str=True)


# -- every file composes ---------------------------------------------------------------------------------------------
def test_every_file_under_conf_is_composed_by_a_test():
    """Group options are composed by tests/config/test_configs.py; the rest here (top-level configs, bases)."""
    top_level = {p.stem for p in CONF.glob("*.yaml")}
    assert top_level == {"train", "inspect", "report", "predict", "common"}
    bases = sorted(CONF.rglob("_*.yaml"))
    assert bases, "the presets extend a base file"
    for base in bases:
        group = base.parent.relative_to(CONF).as_posix()
        users = [p for p in base.parent.glob("*.yaml") if base.stem in (OmegaConf.load(p).get("defaults") or [])]
        assert users, f"{group}/{base.name} is extended by no option of {group}"


@pytest.mark.parametrize("name", ["train", "inspect", "report", "predict"])
def test_each_top_level_config_composes_against_its_schema(name, tmp_path):
    overrides = [f"paths.runs_dir={tmp_path}"]
    if name == "predict":
        overrides += ["predict.model=run", "predict.output=out.csv"]
        # with a dataset= option the window length comes from the model (cli/predict.py sets it before typing)
        with_dataset = compose_config([*overrides, "dataset=butppg_green"], config_name=name)
        assert (with_dataset.dataset.name, with_dataset.dataset.loader) == ("butppg_green", DatasetLoader.butppg)
    cfg = compose_config(overrides, config_name=name)
    if name in ("train", "inspect"):
        to_config(cfg)
    else:
        OmegaConf.to_object(cfg)  # the report / predict schemas: no training config
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_a_base_file_is_not_a_backbone_on_its_own():
    """`_pretrained` shows up in --help (Hydra cannot hide a file of a group); chosen alone it has no name."""
    first = (CONF / "backbone" / "_pretrained.yaml").read_text().splitlines()[0]
    assert first.startswith("# NOT A BACKBONE")
    with pytest.raises(Exception, match="backbone.name"):
        to_config(compose_config(["backbone=_pretrained"]))


# -- each default once -----------------------------------------------------------------------------------------------
def _own(path: Path) -> dict:
    own = plain(OmegaConf.load(path))
    own.pop("defaults", None)
    return own


def _composed(group: str, option: str):
    """The group node an option composes to, from the schema's defaults and its defaults list (recursively)."""
    node = OmegaConf.structured(TrainConfig)[group]
    path = CONF / group / f"{option}.yaml"
    for parent in OmegaConf.load(path).get("defaults") or []:
        if parent != "_self_":
            node = OmegaConf.merge(node, _composed(group, parent))
    return OmegaConf.merge(node, _own(path))


@pytest.mark.parametrize("group", ["backbone", "dataset", "unfreeze", "optim", "trainer", "tracking", "paths"])
def test_no_file_restates_a_value_it_would_get_anyway(group):
    """Every key a file states differs from the schema's default or from the file it extends."""
    for path in sorted((CONF / group).glob("*.yaml")):
        base = OmegaConf.structured(TrainConfig)[group]
        for parent in OmegaConf.load(path).get("defaults") or []:
            if parent != "_self_":
                base = OmegaConf.merge(base, _composed(group, parent))
        before, own = plain(base), _own(path)
        restated = {k: v for k, v in own.items() if k in before and before[k] == plain(OmegaConf.merge(base, own))[k]}
        assert not restated, f"{group}/{path.name} restates {restated}: state only what differs"


@pytest.mark.parametrize("group", ["optim", "trainer", "tracking", "paths"])
def test_group_default_files_hold_only_comments_and_still_override(group):
    assert not _own(CONF / group / "default.yaml")
    assert plain(compose_config([f"{group}=default"])[group]) == plain(compose_config()[group])


def test_experiment_name_has_one_home():
    files = [p for p in CONF.rglob("*.yaml") if "experiment_name:" in p.read_text()]
    overrides = ["debug/tiny.yaml", "experiment/predecessor_rule.yaml"]
    assert sorted(p.relative_to(CONF).as_posix() for p in files) == overrides
    assert compose_config(config_name="report").experiment_name == compose_config().experiment_name
    assert compose_config(["experiment=predecessor_rule"]).experiment_name == "ttm-predecessor-rule"
    # smoke runs land in their own experiment, never among the real runs a report ranks
    assert compose_config(["debug=tiny"]).experiment_name == "ttm-ppg-quality-smoke"
    assert compose_config(["debug=tiny", "experiment_name=mine"]).experiment_name == "mine"


# -- the composed values did not change --------------------------------------------------------------------------------
def test_cfg_job_values_of_the_default_config_are_unchanged():
    cfg = compose_config()
    for key, value in BEFORE_DEFAULT.items():
        got = plain(cfg[key]) if isinstance(value, dict) else cfg[key]
        if isinstance(value, dict):
            got = {k: v for k, v in got.items() if k in value}
        assert got == value, key
    assert parse_amp(cfg.trainer.amp) == AmpMode.off
    assert plain(cfg.backbone) == BEFORE_BACKBONES["ttm_1024"]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["tracking"]["uri"] == "sqlite:///runs/mlflow.db"
    assert resolved["paths"] == {"runs_dir": "runs", "cache_dir": "runs/cache", "stage_cache_dir": "runs/stage_cache"}


@pytest.mark.parametrize("name", sorted(BEFORE_BACKBONES))
def test_cfg_job_values_of_the_ttm_presets_are_unchanged(name):
    assert plain(compose_config([f"backbone={name}"]).backbone) == BEFORE_BACKBONES[name]


def test_cfg_job_values_of_smoke_butppg_and_hybrid_are_unchanged():
    smoke = compose_config(["debug=tiny"])
    assert smoke.backbone.name == "ttm_tiny" and smoke.backbone.context_length == 128
    d = smoke.dataset
    assert (d.n_subjects, d.windows_per_subject, d.pretrain_subjects) == (10, 12, 10)
    assert (smoke.optim.batch_size, smoke.trainer.progress, smoke.trainer.max_epochs_per_stage) == (32, False, 1)
    but = compose_config(["dataset=butppg"]).dataset
    assert plain(but) == {
        **plain(compose_config().dataset),
        "name": "butppg",
        "loader": "butppg",
    }
    assert (but.nonfinite, but.missing_records, list(but.ppg_channels), but.root) == ("error", "error", ["R"], None)
    hybrid = compose_config(["schedule=hybrid"]).schedule
    assert [s.name for s in hybrid.stages] == ["pretrain", "target_ssl", "head", "partial", "full"]


# -- closed choices are Enums ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override,key,config_name",
    [
        ("dataset.loader=csv", "dataset.loader", "train"),
        ("dataset.nonfinite=maybe", "dataset.nonfinite", "train"),
        ("dataset.missing_records=keep", "dataset.missing_records", "train"),
        ("dataset.pretrain=imagenet", "dataset.pretrain", "train"),
        ("search.direction=up", "search.direction", "train"),
        ("inspect.format=yaml", "inspect.format", "inspect"),
    ],
)
def test_a_wrong_choice_fails_at_compose_time_naming_the_key(override, key, config_name):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config([override], config_name=config_name)
    assert key in f"{err.value} {err.value.__cause__}"


def test_search_pruner_is_a_spec_whose_name_is_checked():
    """`search.pruner` carries the pruner's arguments, so it stays a string; its name is checked once."""
    assert to_config(compose_config(["search.pruner='median:n_warmup_steps=4'"])).search.pruner.startswith("median")
    with pytest.raises(ConfigError, match="search.pruner 'medain'.*unknown pruner"):
        to_config(compose_config(["search.pruner=medain"]))


@pytest.mark.parametrize("spelling,mode", [("false", AmpMode.off), ("true", AmpMode.bf16), ("bf16", AmpMode.bf16)])
def test_amp_spellings_from_the_command_line_still_parse_once(spelling, mode):
    assert to_config(compose_config([f"trainer.amp={spelling}"])).trainer.amp == mode


def test_the_regex_check_is_one_function():
    from ttm_experiments.config.spec import compile_pattern
    from ttm_experiments.errors import UnfreezeError
    from ttm_experiments.models import unfreeze

    with pytest.raises(UnfreezeError, match=r"unfreeze.pattern='enc\(' is not a valid regex"):
        compile_pattern("enc(", UnfreezeError)
    assert unfreeze.compile_pattern is compile_pattern
    with pytest.raises(ConfigError, match="is not a valid regex"):
        to_config(compose_config(["unfreeze.pattern='enc('"]))


# -- a dataset option names its loader -------------------------------------------------------------------------------
def test_butppg_green_is_one_file_read_by_the_butppg_loader():
    from ttm_experiments.data import butppg, prepare

    config = to_config(compose_config(["dataset=butppg_green"]))
    d = config.dataset
    assert (d.name, d.loader, d.ppg_channels, d.channels) == ("butppg_green", DatasetLoader.butppg, ["G"], 1)
    assert (d.nonfinite, d.missing_records, d.task) == (NonFinite.error, MissingRecords.error, "quality")
    assert prepare.dataset_loader(d) is DatasetLoader.butppg
    settings = prepare.loader_settings(d)
    assert isinstance(settings, butppg.Settings) and settings.colours == ("G",) and settings.root is None


def test_butppg_green_loads_the_green_channel(tmp_path):
    from tests.helpers.data_fixtures import write_butppg
    from ttm_experiments.data import butppg
    from ttm_experiments.data.prepare import load_windows, loader_settings

    root = tmp_path / "butppg"
    write_butppg(root, n_subjects=1, records_per_subject=3)
    config = to_config(compose_config(["debug=tiny", "dataset=butppg_green", f"dataset.root={root}"]))
    green = load_windows(config.dataset, seed=0, cache_dir=tmp_path / "cache")
    red_config = to_config(compose_config(["debug=tiny", "dataset=butppg", f"dataset.root={root}"]))
    red = butppg.load_butppg(loader_settings(red_config.dataset), cache_dir=tmp_path / "cache").windows
    assert green.signals.shape == red.signals.shape == (3, 1, 128)
    assert not np.allclose(green.signals, red.signals)
