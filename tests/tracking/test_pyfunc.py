"""The run's MLflow model (ttm_experiments/tracking/pyfunc.py), on the session's smoke run: the training code's own
probabilities, loaded by run, by model id and by registered name; windows that training would refuse are refused."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from tests.helpers.smoke_run import own_probabilities
from ttm_experiments.errors import DataError


def test_logged_model_returns_the_runs_own_test_probabilities(smoke_run):
    from ttm_experiments.metrics.classification import classification_metrics

    mlflow.set_tracking_uri(smoke_run.uri)
    run = smoke_run.parent
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    test = smoke_run.splits.test
    out = model.predict(test.signals)
    assert list(out.columns) == ["p_poor", "p_good"]
    assert np.allclose(out.to_numpy(), own_probabilities(smoke_run, test.signals), atol=1e-6)
    m = classification_metrics(test.labels, out.to_numpy(), test.class_names)
    assert m["auroc"] == pytest.approx(run.data.metrics["test/auroc"], abs=1e-9)
    schema = model.metadata.get_input_schema().inputs[0]
    assert schema.shape == (-1, 1, 128) and schema.type == np.dtype("float32")
    by_id = mlflow.pyfunc.load_model(run.data.tags["model.uri"])  # the LoggedModel, models:/<model_id>
    assert np.allclose(by_id.predict(test.signals[:3]).to_numpy(), out.to_numpy()[:3])


def test_registered_model_loads_by_name_and_version_and_the_run_records_it(smoke_run):
    mlflow.set_tracking_uri(smoke_run.uri)
    tags = smoke_run.parent.data.tags
    assert tags["registered_model"] == "models:/ppg-quality-test/1" and tags["registered_model.version"] == "1"
    x = smoke_run.splits.test.signals[:4]
    got = mlflow.pyfunc.load_model("models:/ppg-quality-test/1").predict(x).to_numpy()
    assert np.allclose(got, own_probabilities(smoke_run, x), atol=1e-6)


def test_logged_model_refuses_windows_that_training_would_refuse(smoke_run):
    mlflow.set_tracking_uri(smoke_run.uri)
    model = mlflow.pyfunc.load_model(f"runs:/{smoke_run.parent.info.run_id}/model").unwrap_python_model()
    bad = smoke_run.splits.test.signals[:2].copy()
    bad[0, 0, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        model.predict(None, bad)
    with pytest.raises(DataError, match=r"\[N, 1, 128\]"):
        model.predict(None, np.zeros((2, 1, 100), np.float32))
