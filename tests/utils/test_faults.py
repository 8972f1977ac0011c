"""The fault hook (ttm_experiments/utils/faults.py): TTM_FAULT=<point>:<n> kills the process at the n-th visit of a
point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.helpers.configs import REPO

PROBE = (
    "from ttm_experiments.utils import faults\n"
    "for i in range(3):\n    faults.point('step')\n    print('after', i + 1, flush=True)\n"
)


def _probe(fault: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TTM_FAULT"}
    if fault is not None:
        env["TTM_FAULT"] = fault
    return subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_fault_kills_at_the_nth_visit_of_its_point():
    done = _probe("step:2")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split("\n")[:-1] == ["after 1"]


def test_fault_unset_or_elsewhere_kills_nothing():
    assert _probe(None).stdout.count("after") == 3
    assert _probe("epoch.ssl:1").stdout.count("after") == 3


def test_fault_count_mode_lists_the_points_reached(tmp_path):
    done = _probe(f"count:{tmp_path / 'points.txt'}")
    assert done.returncode == 0
    assert (tmp_path / "points.txt").read_text().split() == ["step"] * 3


@pytest.mark.parametrize("value", ["step", "step:0", "step:x", "steps:1", "count:"])
def test_a_malformed_fault_is_an_error_not_a_silent_no_op(value):
    done = _probe(value)
    assert done.returncode == 1
    assert "TTM_FAULT" in done.stderr and "<point>:<n>" in done.stderr
