"""`ttm-train debug=smoke` is the check a new user runs first: through the real console script, a healthy install
learns (no MODE COLLAPSE warning, a test AUROC well above chance) and prints nothing of MLflow's (no warnings, no
registry lines, no colour codes); the collapse detector still fires on a run that predicts one class."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent


def _train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_LOGGING_LEVEL", None)
    return subprocess.run(
        [str(BIN / "ttm-train"), "debug=smoke", f"paths.runs_dir={tmp_path}", *overrides],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


@pytest.mark.slow
def test_a_healthy_install_learns_quietly(tmp_path):
    done = _train(tmp_path, "tracking.register_model=ppg-smoke")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "MODE COLLAPSE" not in out
    for noise in ("UserWarning", "Successfully registered", "Created version", "\x1b[", "Traceback"):
        assert noise not in out, noise
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name("ttm-ppg-quality-smoke").experiment_id])
    (run,) = [r for r in found if "stage" not in r.data.tags]
    assert run.data.tags["mode_collapse"] == "false"
    # well above chance (0.5) on the selection split and on the test split (48 windows of 4 subjects each)
    assert run.data.metrics["best/val_auroc"] > 0.75 and run.data.metrics["test/auroc"] > 0.65


@pytest.mark.slow
def test_a_run_that_predicts_one_class_still_warns(tmp_path):
    # plain cross-entropy on 5 % "good": the model learns to say "poor" always, as the predecessor's did
    done = _train(tmp_path, "optim.loss=ce", "dataset.good_fraction=0.05")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "MODE COLLAPSE on the test set: accuracy of ['good']" in done.stdout + done.stderr
