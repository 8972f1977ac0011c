"""First use of a store by several processes at once, broken stores, locks left by dead processes."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

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


HOLD = """
import sys, time
from ttm_experiments.utils.locks import file_lock
with file_lock(sys.argv[1], what="test", fix="none"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_lock_held_by_a_live_process_waits_then_names_it_and_a_dead_holders_lock_is_taken_over(tmp_path):
    target = tmp_path / "store.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=f"held for over 0 s by process {holder.pid}, which is still alive"):
            with locks.file_lock(target, what="test", fix="none", wait_s=0.3):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it
        holder.wait(timeout=30)
    assert locks.lock_path(target).exists()
    t0 = time.monotonic()
    with locks.file_lock(target, what="test", fix="none", wait_s=5):
        assert locks.lock_path(target).read_text().strip() == str(os.getpid())
    assert time.monotonic() - t0 < 1.0


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
    """The issue's report: four `ttm-train debug=smoke` at once on a new runs_dir (no multirun callback)."""
    from mlflow.tracking import MlflowClient

    runs = tmp_path / "runs"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ttm_experiments.cli.train",
                "debug=smoke",
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
