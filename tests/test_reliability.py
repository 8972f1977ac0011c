"""Resume after a real SIGKILL, determinism, refusing a changed config, guards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from mlflow.tracking import MlflowClient

from ttm_experiments.cli.train import train
from ttm_experiments.errors import ConfigError
from ttm_experiments.training import loop

SMALL = ("debug=smoke", "dataset.windows_per_subject=24", "trainer.max_epochs_per_stage=4")


def _parents(runs_dir: Path, experiment: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, [r for r in runs if "mlflow.parentRunId" not in r.data.tags], runs


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
    _, parents, _ = _parents(runs, "resume")
    assert [p.info.status for p in parents] == ["RUNNING"]  # what a killed process leaves behind

    resumed = subprocess.run(_cmd(runs, out), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "RESUMING" in resumed.stdout + resumed.stderr

    client, parents, all_runs = _parents(runs, "resume")
    _, reference, _ = _parents(reference_runs, "resume")
    assert len(parents) == 1 and len(all_runs) == 4  # same parent and stage runs, no duplicates
    assert all(r.info.status == "FINISHED" for r in all_runs)
    parent = parents[0]
    steps = [m.step for m in client.get_metric_history(parent.info.run_id, "val/auroc")]
    assert steps == list(range(1, 13))  # every epoch once
    for key, value in reference[0].data.metrics.items():
        if key.startswith(("test/", "val/", "train/", "best/")):
            assert parent.data.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_same_config_and_seed_give_identical_metrics_on_cpu(smoke, runs_dir):
    train(smoke("experiment_name=det"))
    train(smoke("experiment_name=det"))
    _, parents, _ = _parents(runs_dir, "det")
    a, b = (p.data.metrics for p in parents)
    assert a == b


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
    out = recipe.info.output_dir
    with pytest.raises(ConfigError) as err:
        train(smoke("experiment_name=changed", "optim.lr=0.01", f"resume={out}"))
    assert "optim.lr: checkpoint 0.001, now 0.01" in str(err.value)
    # the original config resumes, by run id as well as by directory
    _, parents, _ = _parents(runs_dir, "changed")
    train(smoke("experiment_name=changed", f"resume={parents[0].info.run_id}"))
    _, parents, _ = _parents(runs_dir, "changed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and parents[0].data.tags["resumed"] == "true"


def test_resume_of_a_finished_run_is_refused(smoke, runs_dir):
    train(smoke("experiment_name=fin"))
    out = next((runs_dir / "outputs" / "compose").iterdir())
    with pytest.raises(ConfigError, match="already finished"):
        train(smoke("experiment_name=fin", f"resume={out}"))


def test_non_finite_loss_stops_with_the_batch_and_marks_the_run_failed(smoke, runs_dir, monkeypatch):
    real = loop.Trainer.train_epoch

    def poisoned(self, optimizer, scheduler, desc, check_gradients=False):
        with torch.no_grad():
            next(self.model.head.parameters()).fill_(float("nan"))
        return real(self, optimizer, scheduler, desc, check_gradients)

    monkeypatch.setattr(loop.Trainer, "train_epoch", poisoned)
    with pytest.raises(loop.NonFiniteLoss, match=r"the training loss is nan at batch 0.*Lower optim.lr"):
        train(smoke("experiment_name=nan"))
    _, parents, runs = _parents(runs_dir, "nan")
    assert parents[0].info.status == "FAILED" and "NonFiniteLoss" in parents[0].data.tags["failure"]
    assert all(r.info.status == "FAILED" for r in runs)
    assert not list(runs_dir.glob("outputs/**/best.pt"))  # nothing that looks like a result


def test_collapse_stop_ends_the_stage_and_says_which_class(smoke, runs_dir, caplog):
    # threshold 0.99: any class under 99 % accuracy counts as collapsed, so the first epoch stops the stage
    train(
        smoke(
            "experiment_name=stop",
            "trainer.collapse_action=stop",
            "trainer.collapse_threshold=0.99",
            "trainer.max_epochs_per_stage=3",
        )
    )
    _, parents, runs = _parents(runs_dir, "stop")
    head = next(r for r in runs if r.data.tags.get("stage") == "head")
    assert head.data.tags["collapse_stop"].startswith("head@1:")
    assert "MODE COLLAPSE at epoch 1 (stage head)" in caplog.text
    assert parents[0].data.tags["mode_collapse"] == "true"


def test_gradient_check_catches_a_frozen_parameter_with_a_gradient():
    from conftest import TINY_TTM, backbone_conf

    from ttm_experiments.models.backbones import build_classifier

    model = build_classifier(backbone_conf(**TINY_TTM, head_hidden=8), num_channels=1, num_classes=2)
    model(torch.randn(2, 1, 128)).sum().backward()  # everything trainable: all get gradients
    loop.check_trainable_gradients(model, "ok")
    next(model.backbone.parameters()).requires_grad_(False)
    with pytest.raises(loop.GradientMismatch, match="1 frozen ones got one"):
        loop.check_trainable_gradients(model, "stage")


@pytest.mark.slow
def test_eight_parallel_jobs_on_one_sqlite_store_lose_nothing(tmp_path):
    """8 joblib processes write to one fresh SQLite store at once: every run FINISHED with every metric."""
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "ttm_experiments.cli.train",
        "-m",
        "debug=smoke",
        "seed=0,1,2,3,4,5,6,7",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=8",
        f"paths.runs_dir={runs}",
        "experiment_name=eight",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parents, runs_found = _parents(runs, "eight")
    assert len(parents) == 8 and len(runs_found) == 32
    assert all(r.info.status == "FINISHED" for r in runs_found)
    for parent in parents:
        steps = [m.step for m in client.get_metric_history(parent.info.run_id, "val/auroc")]
        assert steps == [1, 2, 3]
        assert "test/auroc" in parent.data.metrics


def test_resume_with_an_unknown_run_id_names_both_ways_to_resume(tmp_path):
    from ttm_experiments.errors import CheckpointError
    from ttm_experiments.training.resume import locate

    with pytest.raises(CheckpointError, match="neither a run directory nor an MLflow run id.*RESOURCE_DOES_NOT_EXIST"):
        locate("0123456789abcdef", f"sqlite:///{tmp_path}/mlflow.db")
