"""A whole run given bad input gets a clear error that names the thing and the fix, before training, losing nothing
(earlier runs and files intact)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ttm_experiments.cli.train import train
from ttm_experiments.errors import CheckpointError, ConfigError, DataError, StoreError, TrackingError, UnfreezeError


@pytest.mark.parametrize(
    "override,error,words",
    [
        ("unfreeze.last_n=9", UnfreezeError, ["last_n=9", "has 4 blocks"]),
        ("unfreeze.last_n=-1", ConfigError, ["unfreeze.last_n=-1", ">= 0"]),
        ("unfreeze.pattern=blocks\\.\\d+", UnfreezeError, ["matches no module", "Candidate modules"]),
        ("unfreeze.pattern='enc('", ConfigError, ["not a valid regex"]),
        ("optim.lr=0", ConfigError, ["optim.lr=0"]),
        ("optim.lr=nan", ConfigError, ["optim.lr=nan"]),
        ("dataset.window_length=100", ConfigError, ["dataset.window_length=100", "backbone.context_length=128"]),
        ("dataset.fold=7", DataError, ["dataset.fold=7", "0..4"]),
        ("dataset.n_folds=50", DataError, ["subjects cannot fill 50"]),
        ("backbone.pretrained_path=/nonexistent/foundation.pt", CheckpointError, ["does not exist"]),
        ("schedule.stages.0.epochs=0", ConfigError, ["epochs=0"]),
    ],
)
def test_bad_config_values(smoke, override, error, words):
    with pytest.raises(error) as err:
        train(smoke(override))
    for word in words:
        assert word in str(err.value)


def test_unreachable_tracking_server_fails_before_any_work(smoke, runs_dir):
    with pytest.raises(TrackingError) as err:
        train(smoke("tracking.uri=http://127.0.0.1:9"))
    assert "http://127.0.0.1:9" in str(err.value) and "Nothing was trained" in str(err.value)
    assert not (runs_dir / "cache").exists()  # no data was generated


def test_a_failed_run_keeps_earlier_runs_intact(smoke, runs_dir):
    train(smoke("experiment_name=keep"))
    with pytest.raises(UnfreezeError):
        train(smoke("experiment_name=keep", "unfreeze=depth"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("keep")
    finished = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    assert len(finished) == 4  # the earlier parent and its 3 stages; the failed config started no run
    assert all(r.info.status == "FINISHED" for r in client.search_runs([experiment.experiment_id]))


@pytest.mark.parametrize("runs", ["/sys/ttm-runs", "/sys"], ids=["cannot-create", "not-writable"])
def test_unwritable_runs_dir_fails_before_training(smoke, runs):
    with pytest.raises(TrackingError) as err:
        train(smoke(f"paths.runs_dir={runs}"))
    assert "paths.runs_dir=" in str(err.value) and "Nothing was trained" in str(err.value)


def test_full_disk_fails_cleanly_keeping_earlier_runs_and_files(smoke, runs_dir, monkeypatch):
    import errno

    from ttm_experiments.models import checkpoint

    train(smoke("experiment_name=disk"))

    def no_space(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(StoreError, match="last.pt: no space left on the device.*rerun the same command"):
        train(smoke("experiment_name=disk"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("disk").experiment_id])
    assert sorted(r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags) == ["FAILED", "FINISHED"]
    assert not list(runs_dir.rglob("*.tmp"))  # no half-written file left behind
