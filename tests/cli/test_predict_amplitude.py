"""`ttm-predict` and windows in other units. The default model (`backbone.scale_features=false`) gives the same
probabilities in any units and says so; a model that reads amplitude (`backbone.scale_features=true`) counts the
windows outside its training range per recording, warns by default, refuses with `predict.on_ood=error` before
scoring, and says nothing with `ignore`; each window's flag is in the output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.configs import compose_config
from tests.helpers.smoke_run import SmokeRun
from ttm_experiments.errors import DataError


def _recording(run: SmokeRun, path: Path, a: float = 1.0, b: float = 0.0) -> Path:
    """Six training windows back to back at the model's own rate (no resampling): a recording in training's units,
    or in other units (a * x + b)."""
    x = np.concatenate(list(run.splits.train.signals[:6, 0].astype(np.float64)))
    np.savez(path, signal=x * a + b, fs=run.config.backbone.context_length / run.config.dataset.duration_s)
    return path


@pytest.fixture(scope="module")
def reads_amplitude(smoke_run, tmp_path_factory) -> Path:
    """A classifier whose head reads amplitude, at the smoke model's shape, recording the smoke run's training
    range (weights random, the head's normalisation set to the training statistics): what training with
    backbone.scale_features=true writes, without the minute of training."""
    import torch

    from tests.helpers.configs import TINY_TTM, backbone_conf
    from ttm_experiments.models.amplitude import AmplitudeRange, window_stats
    from ttm_experiments.models.backbones import build_classifier
    from ttm_experiments.models.checkpoint import save_classifier

    train = smoke_run.splits.train.signals
    torch.manual_seed(0)
    model = build_classifier(backbone_conf(**TINY_TTM, scale_features=True), num_channels=1, num_classes=2)
    loc, log_scale = window_stats(train)
    model.head.scale_norm.running_mean.copy_(torch.tensor([loc.mean(), log_scale.mean()]))
    model.head.scale_norm.running_var.copy_(torch.tensor([loc.var(), log_scale.var()]))
    path = tmp_path_factory.mktemp("amp") / "best.pt"
    window_s = smoke_run.config.dataset.duration_s
    save_classifier(
        path, model.eval(), "full", ("poor", "good"), window_s=window_s, amplitude=AmplitudeRange.of(train).as_dict()
    )
    return path


def _predict(run: SmokeRun, tmp_path: Path, recording: Path, *overrides: str, model: Path | None = None) -> dict:
    from ttm_experiments.cli.predict import run as predict_run

    cfg = compose_config(
        [
            f"paths.runs_dir={run.runs}",
            f"predict.model={model or run.ckpt}",
            f"predict.input={recording}",
            f"predict.output={tmp_path / 'p.csv'}",
            *overrides,
        ],
        config_name="predict",
    )
    return predict_run(cfg)


def test_the_default_model_answers_the_same_in_any_units_and_says_so(smoke_run, tmp_path):
    same = _predict(smoke_run, tmp_path, _recording(smoke_run, tmp_path / "same.npz"))
    assert not any("amplitude" in line for line in same["summary"])
    p_same = pd.read_csv(same["output"])["p_good"].to_numpy()
    adc = _predict(smoke_run, tmp_path, _recording(smoke_run, tmp_path / "adc.npz", a=1000.0, b=1e6))
    assert np.allclose(pd.read_csv(adc["output"])["p_good"].to_numpy(), p_same, atol=1e-4)
    assert adc["summary"][-1].startswith("amplitude: 6 of 6 windows in other units than training's")


def test_training_units_pass_without_a_word(smoke_run, tmp_path, reads_amplitude):
    r = _predict(smoke_run, tmp_path, _recording(smoke_run, tmp_path / "same.npz"), model=reads_amplitude)
    table = pd.read_csv(r["output"])
    assert len(table) == 6 and not table["outside_training_amplitude"].any()
    assert not any("amplitude" in line for line in r["summary"])


def test_adc_counts_are_counted_and_warned_about(smoke_run, tmp_path, caplog, reads_amplitude):
    rec = _recording(smoke_run, tmp_path / "adc.npz", a=1000.0, b=1e6)
    with caplog.at_level("WARNING"):
        r = _predict(smoke_run, tmp_path, rec, model=reads_amplitude)
    assert pd.read_csv(r["output"])["outside_training_amplitude"].all()
    assert r["summary"][-1].startswith("WARNING: 6 of 6 windows outside the training amplitude")
    assert "adc 6/6" in r["summary"][-1]
    (warning,) = [rec.getMessage() for rec in caplog.records if "outside the amplitude" in rec.getMessage()]
    assert "backbone.scale_features=false" in warning and "predict.on_ood=error" in warning


def test_on_ood_error_refuses_before_scoring_and_ignore_is_silent(smoke_run, tmp_path, reads_amplitude):
    rec = _recording(smoke_run, tmp_path / "adc.npz", a=1000.0, b=1e6)
    with pytest.raises(DataError, match=r"6 of 6 windows lie outside .* Fix: give the signal in the training"):
        _predict(smoke_run, tmp_path, rec, "predict.on_ood=error", model=reads_amplitude)
    assert not (tmp_path / "p.csv").exists()  # refused before anything was written
    r = _predict(smoke_run, tmp_path, rec, "predict.on_ood=ignore", model=reads_amplitude)
    assert not any("amplitude" in line for line in r["summary"])


def test_on_ood_takes_only_its_three_values(smoke_run, tmp_path):
    with pytest.raises(Exception, match="on_ood"):
        compose_config([f"predict.model={smoke_run.ckpt}", "predict.on_ood=maybe"], config_name="predict")
