"""Values the schema's types accept but a run cannot use are refused when the config is read (to_config), naming
the key and the fix."""

from __future__ import annotations

import pytest

from tests.helpers.configs import compose_config
from ttm_experiments.config.schema import FrozenMode, parse_metric
from ttm_experiments.config.spec import to_config
from ttm_experiments.errors import ConfigError


def test_frozen_mode_is_a_config_key(smoke):
    assert to_config(smoke()).unfreeze.frozen_mode == FrozenMode.eval
    assert to_config(smoke("unfreeze.frozen_mode=train")).unfreeze.frozen_mode == FrozenMode.train


def test_parse_metric_gives_the_direction():
    assert parse_metric("val/auroc").direction == "maximize"
    assert parse_metric("val/loss").direction == "minimize" and parse_metric("train/loss").split == "train"
    with pytest.raises(ConfigError, match="optimized_metric='auroc'"):
        parse_metric("auroc")


def test_a_trial_whose_direction_contradicts_the_metric_is_refused(smoke):
    with pytest.raises(ConfigError, match="optimized_metric=val/loss is to minimize.*hydra.sweeper.direction"):
        to_config(
            smoke(
                "optimized_metric=val/loss",
                "search.trial_number=0",
                "search.study_name=s",
                "search.storage=sqlite:///x.db",
                "search.direction=maximize",
            )
        )


@pytest.mark.parametrize("loss", ["weighted_ce", "focal"])
def test_sampler_with_a_weighted_loss_is_refused(smoke, loss):
    with pytest.raises(ConfigError, match=f"optim.balanced_sampler=true with optim.loss={loss}.*optim.loss=ce"):
        to_config(smoke("optim.balanced_sampler=true", f"optim.loss={loss}"))
    to_config(smoke("optim.balanced_sampler=true", "optim.loss=ce"))


def test_unknown_stage_kind_fails_at_compose_time(smoke):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="kind"):
        smoke("schedule.stages.0.kind=reinforce")


@pytest.mark.parametrize(
    "override, key",
    [
        ("backbone.dropout=1.5", "backbone.dropout"),
        ("backbone.revision=' '", "backbone.revision"),
        ("optim.pretrained_layer_decay=0", "optim.pretrained_layer_decay"),
        ("optim.pretrained_backbone_lr_scale=-1", "optim.pretrained_backbone_lr_scale"),
    ],
)
def test_bad_new_keys_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_config(compose_config([override]))
