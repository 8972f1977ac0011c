"""The configs of the other commands (conf/predict.yaml, conf/report.yaml) and the keys they add: typed, composed
with each dataset, kept out of the training config."""

from __future__ import annotations

import pytest

from tests.helpers.configs import compose_config, compose_report


@pytest.mark.parametrize("dataset", ["butppg", "windows", "vitaldb", "synthetic"])
def test_predict_config_composes_with_each_dataset_and_refuses_unknown_keys(dataset):
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError

    from ttm_experiments.config.schema import PredictConf, PredictConfig

    cfg = compose_config(
        [
            "predict.model=m",
            "predict.output=o.csv",
            f"dataset={dataset}",
            "predict.channels=[R]",
            "predict.fs=30",
            "predict.hop_s=2.5",
        ],
        config_name="predict",
    )
    conf = OmegaConf.to_object(cfg.predict)
    assert isinstance(conf, PredictConf) and conf.channels == ["R"] and conf.fs == 30.0 and conf.hop_s == 2.5
    assert cfg.dataset.name == dataset and compose_config(config_name="predict").dataset is None
    assert OmegaConf.get_type(compose_config(config_name="predict")) is PredictConfig
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="predict.colum"):
        compose_config(["predict.colum=ppg"], config_name="predict")


def test_register_model_is_a_typed_tracking_key():
    from ttm_experiments.config.spec import to_config

    assert to_config(compose_config()).tracking.register_model is None
    assert to_config(compose_config(["tracking.register_model=ppg-quality"])).tracking.register_model == "ppg-quality"


def test_report_settings_are_not_train_settings():
    from hydra.errors import ConfigCompositionException

    assert "report" not in compose_config([])  # not logged as params of every run, not compared on resume
    with pytest.raises(ConfigCompositionException, match="report"):
        compose_config(["report.sweep=x"])
    assert compose_report(["report.sweep=x"]).report.sweep == "x"


def test_new_keys_compose_with_their_types():
    r = compose_report(["report.compare=schedule", "report.baseline=head_only"]).report
    assert (r.compare, r.baseline) == ("schedule", "head_only")
    assert compose_config(["search.tuned_in=s-fold0-split0"]).search.tuned_in == "s-fold0-split0"
