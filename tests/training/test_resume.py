"""Resume (ttm_experiments/training/resume.py): after a real SIGKILL, to the uninterrupted result; a changed config,
a finished or pruned run refused; random generators and the pending epoch restored. And determinism on CPU."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers.configs import REPO
from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import train
from ttm_experiments.errors import ConfigError

SMALL = ("debug=tiny", "dataset.windows_per_subject=24", "trainer.max_epochs_per_stage=4")


def _cmd(runs_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ttm_experiments.cli.train",
        *SMALL,
        f"paths.runs_dir={runs_dir}",
        f"hydra.run.dir={out}",
        "experiment_name=resume",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_gives_the_uninterrupted_result(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    reference_runs = tmp_path / "reference"
    subprocess.run(
        _cmd(reference_runs, reference_runs / "out"), check=True, cwd=REPO, env=env, capture_output=True, timeout=600
    )

    runs = tmp_path / "killed"
    out = runs / "out"
    proc = subprocess.Popen(
        _cmd(runs, out), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    for line in proc.stdout:  # kill in the middle of the 'partial' stage
        seen.append(line)
        if "[partial] epoch 2/4" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    _, parents, _ = runs_of(runs, "resume")
    assert [p.info.status for p in parents] == ["RUNNING"]  # what a killed process leaves behind

    resumed = subprocess.run(_cmd(runs, out), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "RESUMING" in resumed.stdout + resumed.stderr

    client, parents, all_runs = runs_of(runs, "resume")
    _, reference, _ = runs_of(reference_runs, "resume")
    assert len(parents) == 1 and len(all_runs) == 4  # same parent and stage runs, no duplicates
    assert all(r.info.status == "FINISHED" for r in all_runs)
    parent = parents[0]
    steps = [m.step for m in client.get_metric_history(parent.info.run_id, "val/auroc")]
    assert steps == list(range(1, 13))  # every epoch once
    for key, value in reference[0].data.metrics.items():
        if key.startswith(("test/", "val/", "train/", "best/")):
            assert parent.data.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_same_config_and_seed_give_identical_metrics_on_cpu(smoke, runs_dir, smoke_run):
    train(smoke("experiment_name=det", "trainer.num_threads=1"))  # the session's smoke run, again
    _, (again,), _ = runs_of(runs_dir, "det")
    assert again.data.metrics == smoke_run.parent.data.metrics


def test_resume_with_a_changed_config_is_refused_listing_the_differences(smoke, runs_dir):
    from ttm_experiments.cli.train import run_info
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training.recipe import TrainRecipe

    cfg = smoke("experiment_name=changed")
    recipe = TrainRecipe(to_config(cfg), run_info(cfg))
    recipe.setup()
    original = recipe._checkpoint

    def checkpoint_then_interrupt(*args, **kwargs):  # Ctrl-C right after the first epoch's checkpoint
        original(*args, **kwargs)
        raise KeyboardInterrupt

    recipe._checkpoint = checkpoint_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        recipe.train()
    recipe.release()  # the interrupted process has ended: its run directory is free
    out = recipe.info.output_dir
    with pytest.raises(ConfigError) as err:
        train(smoke("experiment_name=changed", "optim.lr=0.01", f"resume={out}"))
    assert "optim.lr: checkpoint 0.001, now 0.01" in str(err.value)
    # the original config resumes, by run id as well as by directory
    _, parents, _ = runs_of(runs_dir, "changed")
    train(smoke("experiment_name=changed", f"resume={parents[0].info.run_id}"))
    _, parents, _ = runs_of(runs_dir, "changed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and parents[0].data.tags["resumed"] == "true"


def test_resume_of_a_finished_run_is_refused(smoke, smoke_run):
    out = smoke_run.parent.data.tags["output_dir"]  # the session's smoke run: refused before anything is written
    with pytest.raises(ConfigError, match="already finished"):
        train(smoke("trainer.num_threads=1", f"resume={out}"))


def test_resume_with_an_unknown_run_id_names_both_ways_to_resume(tmp_path):
    from ttm_experiments.errors import CheckpointError
    from ttm_experiments.training.resume import locate

    with pytest.raises(CheckpointError, match="neither a run directory nor an MLflow run id.*RESOURCE_DOES_NOT_EXIST"):
        locate("0123456789abcdef", f"sqlite:///{tmp_path}/mlflow.db")


def test_every_generator_round_trips(tmp_path):
    from ttm_experiments.training.resume import restore_rng, rng_state

    gen = torch.Generator().manual_seed(3)
    state = rng_state({"trainer": gen})
    drawn = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    restore_rng(state, {"trainer": gen})
    assert drawn == (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    assert "cuda" in state and "python" in state


def test_resume_logs_the_pending_epoch_to_each_run_that_lacks_it(tmp_path):
    from ttm_experiments.tracking.mlflow_tracker import MlflowTracker
    from ttm_experiments.training.resume import continue_tracking

    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "heal")
    tracker.start_run("p", {})
    tracker.start_stage("head", {})
    parent, stage = tracker.run_id, tracker.stage_run_id
    tracker.log_metrics({"val/auroc": 0.7}, step=3, run_ids=(parent,))  # killed after the parent's write
    state = {"run_ids": {"parent": parent, "stage": stage}, "pending": {"epoch": 3, "metrics": {"val/auroc": 0.7}}}
    resumed = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "heal")
    continue_tracking(resumed, state)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_metric_history
    assert [m.step for m in client(parent, "val/auroc")] == [3]
    assert [m.step for m in client(stage, "val/auroc")] == [3]


def test_a_pruned_run_cannot_be_resumed(tmp_path):
    from ttm_experiments.training.resume import STATE_FILE, find_state, mark_finished

    mark_finished(tmp_path / STATE_FILE, config={}, run_id="r1", pruned=True)
    with pytest.raises(ConfigError, match="was pruned by its Optuna study"):
        find_state(resume=None, output_dir=tmp_path, tracking_uri="sqlite:///x.db", config={})
