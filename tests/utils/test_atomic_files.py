"""Atomic writes (`ttm_experiments/utils/files.py`): a writer killed mid-write leaves a temporary file, which the next
write of the same target removes; a live writer's temporary is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ttm_experiments.utils import files
from ttm_experiments.utils.files import atomic_file, remove_stale_temporaries

WRITER = """
import sys, time
from pathlib import Path
from ttm_experiments.utils.files import atomic_file
with atomic_file(Path(sys.argv[1])) as tmp:
    tmp.write_text("half")
    print(tmp, flush=True)
    time.sleep(600)
"""


def _writer(target):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def _age(path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_a_killed_writers_temporary_is_removed_by_the_next_write_and_a_live_ones_is_kept(tmp_path):
    target = tmp_path / "last.pt"
    live, live_tmp = _writer(target)
    killed, killed_tmp = _writer(target)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        for tmp in (live_tmp, killed_tmp):
            _age(tmp, files.STALE_AFTER_S + 1)
        with atomic_file(target) as tmp:
            tmp.write_text("whole")
        assert target.read_text() == "whole"
        assert not os.path.exists(killed_tmp)  # its writer is dead
        assert os.path.exists(live_tmp)  # its writer still holds it
    finally:
        live.kill()
        live.wait(timeout=30)
    _age(live_tmp, files.STALE_AFTER_S + 1)
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [os.path.basename(live_tmp)]


def test_young_temporaries_and_other_targets_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "STALE_AFTER_S", 3600.0)  # `young` stays young however slow this test runs
    young = tmp_path / ".last.pt.abc.tmp"
    young.write_text("x")  # no writer holds it, but it is younger than STALE_AFTER_S: perhaps not yet locked
    other = tmp_path / ".best.pt.def.tmp"
    other.write_text("x")
    _age(other, files.STALE_AFTER_S + 1)
    assert remove_stale_temporaries(tmp_path, "last.pt") == []
    assert young.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path) == [other]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f"]
