"""The cross-process file lock of a store's first use: a live holder is waited for, then named; a dead holder's lock is
taken over at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.helpers.configs import REPO
from ttm_experiments.errors import StoreError
from ttm_experiments.utils import locks

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
HOLD = """
import sys, time
from ttm_experiments.utils.locks import file_lock
with file_lock(sys.argv[1], what="test", fix="none"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_lock_held_by_a_live_process_waits_then_names_it_and_a_dead_holders_lock_is_taken_over(tmp_path, monkeypatch):
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

    def no_wait(seconds):
        raise AssertionError("file_lock waited, but the holder is dead: its lock is free")

    monkeypatch.setattr(locks, "time", SimpleNamespace(monotonic=time.monotonic, sleep=no_wait))
    with locks.file_lock(target, what="test", fix="none", wait_s=5):  # taken over at once
        assert locks.lock_path(target).read_text().strip() == str(os.getpid())
