"""Preemption under submitit: a job of `hydra/launcher=submitit_local` that receives submitit's
preemption signal (USR2, what SLURM sends `signal_delay_s` before the end) is checkpointed by the launcher
(`BaseSubmititLauncher.checkpoint()` -> `DelayedSubmission` of the same job), requeued by submitit's local
controller (exit status 144, the task is started again), and the requeued job resumes from its `last.pt`:
one MLflow run, FINISHED, with the uninterrupted run's metrics.

Not tested here (no SLURM): `scontrol requeue` itself and SLURM's SIGTERM before a SIGKILL; submitit ignores
that SIGTERM in a job (`SignalHandler.bypass`), and ttm-train leaves it to submitit (training/signals.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.configs import REPO

SMALL = ("debug=tiny", "dataset.windows_per_subject=24", "trainer.max_epochs_per_stage=4", "trainer.num_threads=1")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _job_task(parent: psutil.Process) -> psutil.Process | None:
    """The process that runs the job's function: submitit's `_submit` under the local controller."""
    for child in parent.children(recursive=True):
        try:
            if "submitit.core._submit" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _job_logs(sweep: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(sweep.glob(".submitit/*/*_log.*")))


def _parents_and_stages(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "stage" not in r.data.tags]
    return client, parents, [r for r in runs if "stage" in r.data.tags]


@pytest.mark.slow
def test_a_preempted_submitit_job_is_requeued_and_resumes_to_the_uninterrupted_result(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ttm_experiments.cli.train",
            *SMALL,
            f"paths.runs_dir={reference}",
            f"hydra.run.dir={reference / 'out'}",
            "experiment_name=requeue",
        ],
        cwd=REPO,
        env=ENV,
        check=True,
        capture_output=True,
        timeout=900,
    )

    runs, sweep = tmp_path / "runs", tmp_path / "sweep"
    out = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ttm_experiments.cli.train",
            "-m",
            "hydra/launcher=submitit_local",
            *SMALL,
            f"paths.runs_dir={runs}",
            f"hydra.sweep.dir={sweep}",
            "experiment_name=requeue",
        ],
        cwd=REPO,
        env=ENV,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 600
        while "[partial] epoch 1/4" not in _job_logs(sweep):  # mid-run: 7 epochs of 12 still to go
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:] + _job_logs(sweep)[-3000:]
            assert time.monotonic() < deadline, "the job did not reach the partial stage in 600 s"
            time.sleep(0.1)
        task = _job_task(psutil.Process(proc.pid))
        assert task is not None, "no submitit task process found"
        os.kill(task.pid, signal.SIGUSR2)  # what submitit's SLURM and local executors send before the time limit
        assert proc.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()[-3000:] + _job_logs(sweep)[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()

    logs = _job_logs(sweep)
    assert "this job is preempted" in logs and "Requeued job" in logs, logs[-3000:]
    assert "RESUMING" in logs  # the requeued task continued from last.pt, not from scratch
    client, parents, stages = _parents_and_stages(f"sqlite:///{runs}/mlflow.db", "requeue")
    assert [p.info.status for p in parents] == ["FINISHED"] and parents[0].data.tags.get("resumed") == "true"
    # submitit's exit (144) was recorded as a preemption, and is history once the requeued task resumed
    assert "failure" not in parents[0].data.tags and "stop_reason" not in parents[0].data.tags
    assert parents[0].data.tags["resumed.after"] == "stop_reason=preempted"
    assert sorted(s.data.tags["stage"] for s in stages) == ["full", "head", "partial"]
    assert all(s.info.status == "FINISHED" for s in stages)
    for run in (*parents, *stages):  # every epoch logged exactly once
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/auroc")]
        expected = 12 if run in parents else 4
        assert sorted(steps) == sorted(set(steps)) and len(steps) == expected, (run.info.run_name, steps)

    _, ref_parents, _ = _parents_and_stages(f"sqlite:///{reference}/mlflow.db", "requeue")
    test = {k: v for k, v in parents[0].data.metrics.items() if k.startswith("test/")}
    assert test and test == {k: v for k, v in ref_parents[0].data.metrics.items() if k.startswith("test/")}
    ref_hist = Counter(
        (m.step, m.value)
        for m in MlflowClient(f"sqlite:///{reference}/mlflow.db").get_metric_history(
            ref_parents[0].info.run_id, "val/loss"
        )
    )
    assert Counter((m.step, m.value) for m in client.get_metric_history(parents[0].info.run_id, "val/loss")) == ref_hist
