"""First use of a store by several processes at once (and many writers on one SQLite store), broken stores, and a
filesystem without locks."""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.configs import REPO
from tests.helpers.runs import runs_of
from ttm_experiments.errors import StoreError
from ttm_experiments.tracking.mlflow_tracker import MlflowTracker
from ttm_experiments.utils import locks

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
# each child imports everything first, then waits for the others (a file barrier) and opens the store at once
OPEN_AT = """
import os, sys, time
from pathlib import Path
from ttm_experiments.tracking.mlflow_tracker import MlflowTracker
import mlflow.store.tracking.sqlalchemy_store
barrier = Path(sys.argv[2])
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < int(sys.argv[3]):
    time.sleep(0.01)
print("experiment", MlflowTracker(sys.argv[1], "race").experiment_id)
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_four_processes_opening_a_fresh_store_at_once_all_succeed(tmp_path):
    """Failed on main before the lock: 3 of 4 got 'table experiments already exists'."""
    uri = f"sqlite:///{tmp_path}/runs/mlflow.db"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT, uri, str(barrier), "4"],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-1500:] for o in outputs)
    assert {o.strip().splitlines()[-1] for o in outputs} == {"experiment 1"}


def test_a_half_migrated_store_is_refused_as_such_and_left_unchanged(tmp_path):
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.initial_models import Base

    db = tmp_path / "mlflow.db"  # what a killed first migration leaves: tables, no schema version
    Base.metadata.create_all(sqlalchemy.create_engine(f"sqlite:///{db}"))
    before = _digest(db)
    with pytest.raises(StoreError) as err:
        MlflowTracker(f"sqlite:///{db}", "x")
    text = str(err.value)
    assert "half-migrated" in text and "no alembic_version table" in text and "tables missing" in text
    assert f"mv {db} {db}.broken" in text and "cannot be reached" not in text and "paths.runs_dir" not in text
    assert _digest(db) == before


def test_a_broken_store_says_which_runs_it_holds(tmp_path):
    db = tmp_path / "mlflow.db"
    tracker = MlflowTracker(f"sqlite:///{db}", "x")
    tracker.start_run("one", {})
    tracker.end_run("FINISHED")
    tracker.start_run("two", {})
    with sqlite3.connect(db) as con:  # a migration interrupted after dropping its bookkeeping
        con.execute("DROP TABLE alembic_version")
    before = _digest(db)
    with pytest.raises(
        StoreError, match=r"half-migrated.*It holds 2 runs \((1 FINISHED, 1 RUNNING|1 RUNNING, 1 FINISHED)\)"
    ):
        MlflowTracker(f"sqlite:///{db}", "x")
    assert _digest(db) == before


def test_a_file_that_is_not_a_database_is_named_not_unreachable(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="is not a readable SQLite database") as err:
        MlflowTracker(f"sqlite:///{db}", "x")
    assert "cannot be reached" not in str(err.value)


def test_a_filesystem_without_locks_is_refused_recommending_a_server(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(locks.fcntl, "flock", no_locks)
    with pytest.raises(StoreError, match=r"does not support file locks .*tracking server \(tracking.uri=http"):
        MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "x")
    from ttm_experiments.tracking.optuna_storage import open_storage

    with pytest.raises(StoreError, match=r"Optuna storage .*does not support file locks.*postgresql://"):
        open_storage(f"sqlite:///{tmp_path}/optuna-nolock.db")
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_four_ttm_train_processes_started_together_on_a_fresh_runs_dir_all_finish(tmp_path):
    """As reported: four `ttm-train debug=tiny` at once on a new runs_dir (no multirun callback)."""
    from mlflow.tracking import MlflowClient

    runs = tmp_path / "runs"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ttm_experiments.cli.train",
                "debug=tiny",
                f"seed={i}",
                f"paths.runs_dir={runs}",
                f"hydra.run.dir={tmp_path / f'out{i}'}",
                "experiment_name=together",
            ],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-1500:] for o in outputs)
    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert len(found) == 16 and all(r.info.status == "FINISHED" for r in found)


@pytest.mark.slow
def test_eight_parallel_jobs_on_one_sqlite_store_lose_nothing(tmp_path):
    """8 joblib processes write to one fresh SQLite store at once: every run FINISHED with every metric."""
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "ttm_experiments.cli.train",
        "-m",
        "debug=tiny",
        "seed=0,1,2,3,4,5,6,7",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=8",
        f"paths.runs_dir={runs}",
        "experiment_name=eight",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parents, runs_found = runs_of(runs, "eight")
    assert len(parents) == 8 and len(runs_found) == 32
    assert all(r.info.status == "FINISHED" for r in runs_found)
    for parent in parents:
        steps = [m.step for m in client.get_metric_history(parent.info.run_id, "val/auroc")]
        assert steps == [1, 2, 3]
        assert "test/auroc" in parent.data.metrics
