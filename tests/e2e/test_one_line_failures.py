"""A read-only or full disk is a one-line error that names the place and the fix, and keeps what was written.

A full disk is injected (ENOSPC from the write, SQLite's "database or disk is full" from the store): a real one
needs a mount, which a CI machine may not allow. The same paths were checked by hand on a 256 KiB tmpfs."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from mlflow.exceptions import MlflowException

from ttm_experiments.errors import StoreError
from ttm_experiments.utils import files


def test_a_read_only_runs_dir_is_one_line_before_hydra_makes_a_folder(tmp_path):
    cmd = [sys.executable, "-m", "ttm_experiments.cli.train", "debug=tiny", "paths.runs_dir=/sys/ttm-runs"]
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: paths.runs_dir: /sys/ttm-runs cannot be created" in proc.stderr
    assert "paths.runs_dir=<a writable directory>" in proc.stderr and "Traceback" not in proc.stderr


def test_a_full_disk_during_a_checkpoint_keeps_the_old_one_and_says_how_to_resume(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"the previous checkpoint")

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_fsync", full)
    with pytest.raises(
        StoreError, match=r"last.pt: no space left.*previous last.pt \(if any\) is kept.*rerun the same command"
    ):
        with files.atomic_file(target) as tmp:
            tmp.write_bytes(b"half of a new one")
    assert target.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_a_full_mlflow_store_is_one_line(tmp_path, monkeypatch):
    from ttm_experiments.tracking.mlflow_tracker import MlflowTracker

    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "full")
    tracker.start_run("r", {})

    def full(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database or disk is full")

    monkeypatch.setattr(tracker.client, "log_batch", full)
    with pytest.raises(StoreError, match=r"disk is full.*what was logged before is kept.*rerun the same command"):
        tracker.log_metrics({"val/auroc": 0.5}, step=1)
