"""A user error on the command line is one message naming the thing and the fix, and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.configs import REPO


def _cli(*args: str, runs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", *args, f"paths.runs_dir={runs}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def test_cli_user_error_is_one_message_and_exit_2(runs_dir):
    proc = _cli("ttm_experiments.cli.inspect_blocks", "unfreeze=depth", runs=runs_dir)
    assert proc.returncode == 2
    assert "error: stage 'partial' asks for the last 2 blocks" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_unknown_key_names_it(runs_dir):
    proc = _cli("ttm_experiments.cli.train", "optim.learning_rate=1e-3", runs=runs_dir)
    assert proc.returncode != 0
    assert "optim.learning_rate" in proc.stderr and "Traceback" not in proc.stderr
