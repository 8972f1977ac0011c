"""The team set-up: a real `mlflow server` (the `mlflow_server` fixture) receiving a grid, its artifacts proxied."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.runs import children, run_cli, train_runs


@pytest.mark.slow
def test_grid_against_a_real_mlflow_server(mlflow_server, tmp_path):
    uri = mlflow_server()
    runs = tmp_path / "runs"
    run_cli(runs, "unfreeze.last_n=0,1", "hydra/launcher=joblib", "experiment_name=server-grid", f"tracking.uri={uri}")
    client = MlflowClient(tracking_uri=uri)
    parents = train_runs(client, "server-grid")
    assert sorted(r.data.params["unfreeze.last_n"] for r in parents) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in parents)
    for run in parents:
        assert "test/auroc" in run.data.metrics
        assert len(client.get_metric_history(run.info.run_id, "val/auroc")) == 3
        assert sorted(r.data.tags["stage"] for r in children(client, run)) == ["full", "head", "partial"]
        # artifacts go through the server (proxied), not through a shared file system path
        assert client.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
        assert "test/confusion_matrix.json" in {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    assert not (runs / "mlflow.db").exists()
