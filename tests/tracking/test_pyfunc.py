"""The run's MLflow model (ttm_experiments/tracking/pyfunc.py), on the session's smoke run: the training code's own
probabilities, loaded by run, by model id and by registered name; windows that training would refuse are refused."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from tests.helpers.smoke_run import own_probabilities
from ttm_experiments.errors import DataError

MODEL = "ppg-quality-ttm-tiny-progressive"  # what it classifies, the backbone, the schedule


def test_logged_model_returns_the_runs_own_test_probabilities(smoke_run):
    from ttm_experiments.metrics.classification import classification_metrics

    mlflow.set_tracking_uri(smoke_run.uri)
    run = smoke_run.parent
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/{MODEL}")
    test = smoke_run.splits.test
    out = model.predict(test.signals)
    assert list(out.columns) == ["p_poor", "p_good", "outside_training_amplitude"]
    assert np.allclose(out[["p_poor", "p_good"]].to_numpy(), own_probabilities(smoke_run, test.signals), atol=1e-6)
    m = classification_metrics(test.labels, out[["p_poor", "p_good"]].to_numpy(), test.class_names)
    assert m["auroc"] == pytest.approx(run.data.metrics["test/auroc"], abs=1e-9)
    schema = model.metadata.get_input_schema().inputs[0]
    assert schema.shape == (-1, 1, 128) and schema.type == np.dtype("float32")
    by_id = mlflow.pyfunc.load_model(run.data.tags["model.uri"])  # the LoggedModel, models:/<model_id>
    assert np.allclose(by_id.predict(test.signals[:3]).to_numpy(dtype=float), out.to_numpy(dtype=float)[:3])


def test_registered_model_loads_by_name_and_version_and_the_run_records_it(smoke_run):
    mlflow.set_tracking_uri(smoke_run.uri)
    tags = smoke_run.parent.data.tags
    assert tags["registered_model"] == "models:/ppg-quality-test/1" and tags["registered_model.version"] == "1"
    x = smoke_run.splits.test.signals[:4]
    got = mlflow.pyfunc.load_model("models:/ppg-quality-test/1").predict(x)[["p_poor", "p_good"]].to_numpy()
    assert np.allclose(got, own_probabilities(smoke_run, x), atol=1e-6)


def test_logged_model_refuses_windows_that_training_would_refuse(smoke_run):
    mlflow.set_tracking_uri(smoke_run.uri)
    model = mlflow.pyfunc.load_model(f"runs:/{smoke_run.parent.info.run_id}/{MODEL}").unwrap_python_model()
    bad = smoke_run.splits.test.signals[:2].copy()
    bad[0, 0, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        model.predict(None, bad)
    with pytest.raises(DataError, match=r"\[N, 1, 128\]"):
        model.predict(None, np.zeros((2, 1, 100), np.float32))


def test_model_metadata_tells_a_client_how_to_cut_windows(smoke_run):
    mlflow.set_tracking_uri(smoke_run.uri)
    model = mlflow.pyfunc.load_model(smoke_run.parent.data.tags["model.uri"])
    meta = model.metadata.metadata
    c = smoke_run.config
    assert meta["class_names"] == ["poor", "good"]
    assert meta["context_length"] == c.backbone.context_length == 128
    assert meta["window_s"] == c.dataset.duration_s
    assert meta["sampling_rate_hz"] == pytest.approx(128 / c.dataset.duration_s)
    assert meta["num_channels"] == 1
    assert meta["amplitude_invariant"] is True  # backbone.scale_features=false, the default
    train_loc = smoke_run.splits.train.signals.mean(axis=2)
    assert meta["training_amplitude"]["loc_low"][0] == pytest.approx(float(train_loc.min()), rel=1e-5)
    assert meta["training_amplitude"]["windows"] == len(smoke_run.splits.train)
    assert "resampled to 128 samples" in meta["input"]
    out = model.predict(smoke_run.splits.test.signals[:4] * 1000 + 1e6)
    assert out["outside_training_amplitude"].all()


def test_logged_model_carries_its_metrics_datasets_and_settings(smoke_run):
    client = smoke_run.client
    run = smoke_run.parent
    model_id = run.data.tags["model.uri"].removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.name == MODEL
    assert logged.params["backbone"] == "ttm_tiny" and logged.params["schedule"] == "progressive"
    linked = {m.key: m for m in logged.metrics}
    assert linked["test/auroc"].value == pytest.approx(run.data.metrics["test/auroc"])
    assert linked["test/auroc"].dataset_name == "synthetic fold 0 test"
    assert linked["best/val_auroc"].dataset_name == "synthetic fold 0 val"
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert linked["test/auroc"].dataset_digest == inputs["synthetic fold 0 test"]
    # each metric once in the run's history: linking them to the model did not log them twice
    assert len(client.get_metric_history(run.info.run_id, "test/auroc")) == 1


def test_registered_version_has_a_description_and_tags(smoke_run):
    client = smoke_run.client
    version = client.get_model_version("ppg-quality-test", "1")
    assert version.run_id == smoke_run.parent.info.run_id
    assert "Input float32 [N, 1, 128]" in version.description and "Test: " in version.description
    assert version.tags["sampling_rate_hz"] == "12.8" and version.tags["classes"] == "poor,good"
    assert version.tags["backbone"] == "ttm_tiny" and version.tags["amplitude_invariant"] == "true"
    # the logged model's page: its description, and the version it became (as MLflow's own registration records it)
    logged = client.get_logged_model(smoke_run.parent.data.tags["model.uri"].removeprefix("models:/"))
    assert logged.tags["mlflow.note.content"] == version.description
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": "ppg-quality-test", "version": "1"}]
    # and the run page's description is the run's summary table
    assert "SUMMARY" in smoke_run.parent.data.tags["mlflow.note.content"]


def test_experiment_opens_in_the_model_training_view(smoke_run):
    exp = smoke_run.client.get_experiment(smoke_run.parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
