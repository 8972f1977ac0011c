"""Baselines run in the same harness, on the same folds, and log the contracted metrics; SQI features that cannot
be computed are counted, and refused past a threshold."""

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
    from tests.helpers.data_fixtures import write_butppg

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


def test_sqi_failures_are_counted_and_refused_past_the_threshold():
    from ttm_experiments.data.base import WindowSet
    from ttm_experiments.models import baselines

    fs, t = 102.4, np.arange(1024) / 102.4
    pulse = np.sin(2 * np.pi * 1.2 * t) + 0.3 * np.sin(2 * np.pi * 2.4 * t) + 100
    flat_noise = np.random.default_rng(0).normal(0, 1e-3, (1, 1024)) + np.linspace(0, 1, 1024)  # no beats

    def windows(n_bad: int) -> WindowSet:
        rows = [pulse[None]] * (40 - n_bad) + [flat_noise] * n_bad
        return WindowSet(
            signals=np.stack(rows).astype(np.float32),
            labels=np.zeros(40, np.int64),
            subjects=np.arange(40),
            class_names=("poor", "good"),
            fs=fs,
        )

    feats, failed = baselines.features("sqi", windows(0))
    assert failed == 0 and np.isfinite(feats).all()
    original = baselines._template_quality
    baselines._template_quality = lambda x, fs: float("nan") if x.std() < 0.5 else original(x, fs)
    try:
        feats, failed = baselines.features("sqi", windows(2))  # 5 %: counted, filled with the worst quality
        assert failed == 2 and feats[-1, baselines.SQI_NAMES.index("templatematch")] == 0.0
        with pytest.raises(DataError, match=r"failed .* on 3 of 40 windows, more than 5%"):
            baselines.features("sqi", windows(3))
    finally:
        baselines._template_quality = original
