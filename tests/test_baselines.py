"""Baselines run in the same harness, on the same folds, and log the contracted metrics."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ttm_experiments.cli.train import train
from ttm_experiments.errors import DataError
from ttm_experiments.models.baselines import SQI_NAMES, sqi_features


def test_sqi_features_separate_clean_from_corrupted_pulses():
    fs, t = 102.4, np.arange(1024) / 102.4
    clean = np.sin(2 * np.pi * 1.2 * t) + 0.3 * np.sin(2 * np.pi * 2.4 * t) + 100
    noisy = clean + np.random.default_rng(0).normal(0, 3, t.size)
    feats = sqi_features(np.stack([clean, noisy])[:, None, :].astype(np.float32), fs)
    assert feats.shape == (2, len(SQI_NAMES))
    hr_power = feats[:, SQI_NAMES.index("hr_band_power")]
    assert hr_power[0] > hr_power[1]


def test_sqi_baseline_logs_the_contracted_metrics(smoke, runs_dir):
    objective = train(smoke("backbone=baseline_sqi", "experiment_name=baselines"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("baselines").experiment_id], "tags.model = 'baseline_sqi'")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    for key in (
        "val/auroc",
        "val/acc/poor",
        "val/acc/good",
        "test/auroc",
        "test/acc/good",
        "test/balanced_acc",
        "test/auroc_ci_low",
        "test/auroc_ci_high",
    ):
        assert key in metrics, key
    assert objective == pytest.approx(metrics["val/auroc"])


def test_site_baseline_needs_the_recording_site(smoke):
    with pytest.raises(DataError, match="only dataset=butppg provides"):
        train(smoke("backbone=baseline_site"))


def test_site_baseline_on_the_butppg_layout(smoke, runs_dir, tmp_path):
    from data_fixtures import write_butppg

    root = tmp_path / "butppg"
    write_butppg(root)
    objective = train(
        smoke(
            "backbone=baseline_site",
            "dataset=butppg",
            f"dataset.root={root}",
            "backbone.context_length=128",
            "experiment_name=site",
        )
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("site").experiment_id], "tags.model = 'baseline_site'")[0]
    assert {"test/auroc", "test/acc/poor", "test/acc/good", "val/auroc"} <= run.data.metrics.keys()
    assert 0.0 <= objective <= 1.0
