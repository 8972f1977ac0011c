"""Running `ttm-train` as a subprocess and reading its MLflow runs back."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.helpers.configs import REPO


def runs_of(runs_dir: Path, experiment: str) -> tuple[MlflowClient, list, list]:
    """The client of `<runs_dir>/mlflow.db`, the experiment's parent runs (oldest first) and all its runs."""
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], order_by=["start_time ASC"])
    parents = sorted((r for r in found if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time)
    return client, parents, found


def cli(runs: Path, *args: str, cache: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ttm_experiments.cli.train",
        "-m",
        "debug=tiny",
        f"paths.runs_dir={runs}",
        "trainer.num_threads=1",
        *([f"paths.cache_dir={cache}"] if cache else []),
        *args,
    ]


def start(cmd: list[str]) -> subprocess.Popen:
    """Start the CLI; its output goes to temporary files (pipes could fill up while other processes run)."""
    import tempfile

    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    proc.files = (out, err)  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    texts = []
    for fh in proc.files:  # type: ignore[attr-defined]
        fh.seek(0)
        texts.append(fh.read())
        fh.close()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, *texts)
    if check:
        assert done.returncode == 0, f"{shlex.join(proc.args)}\n{texts[0][-4000:]}\n{texts[1][-6000:]}"
    return done


def run_cli(runs: Path, *args: str, check: bool = True, cache: Path | None = None) -> subprocess.CompletedProcess:
    return finish(start(cli(runs, *args, cache=cache)), check=check)


def train_runs(client: MlflowClient, experiment: str) -> list:
    """ttm-train runs (not stage or study runs) of an experiment."""
    exp = client.get_experiment_by_name(experiment)
    return [
        r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if "stage" not in r.data.tags and r.data.tags.get("ttm.kind") not in ("study", "report")
    ]


def children(client: MlflowClient, run) -> list:
    return client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
