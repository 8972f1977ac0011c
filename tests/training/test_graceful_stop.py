"""SIGTERM/SIGINT: finish the step, keep last.pt, mark the MLflow runs KILLED with stop_reason, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.configs import REPO
from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import train
from ttm_experiments.training import recipe as recipe_module
from ttm_experiments.training.recipe import TrainRecipe
from ttm_experiments.training.signals import RESUMABLE, Stopped

COMPARED = ("test/", "val/", "train/", "best/")
# as the session's smoke run (the reference): exact metrics whatever torch's thread count was before
ONE_THREAD = "trainer.num_threads=1"


@pytest.fixture
def reference(smoke_run) -> dict[str, float]:
    """The metrics of an uninterrupted smoke run: the session's."""
    return {k: v for k, v in smoke_run.parent.data.metrics.items() if k.startswith(COMPARED)}


def _assert_same_metrics(runs_dir: Path, experiment: str, reference: dict[str, float]) -> None:
    client, parents, found = runs_of(runs_dir, experiment)
    assert len(parents) == 1 and len(found) == 4, [(r.info.run_name, r.info.status) for r in found]
    assert all(r.info.status == "FINISHED" for r in found)
    steps = [m.step for m in client.get_metric_history(parents[0].info.run_id, "val/auroc")]
    assert steps == [1, 2, 3]  # every epoch once: no gap, no duplicate
    assert reference and {k: parents[0].data.metrics[k] for k in reference} == reference


def test_sigterm_mid_run_stops_after_the_step_marks_killed_and_resumes_identically(
    smoke, runs_dir, monkeypatch, reference
):
    original, calls = TrainRecipe._checkpoint, []

    def checkpoint_then_sigterm(self, end, **kwargs):  # SIGTERM right after the first epoch's checkpoint
        original(self, end, **kwargs)
        calls.append(self.info.output_dir)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TrainRecipe, "_checkpoint", checkpoint_then_sigterm)
    with pytest.raises(Stopped) as err:
        train(smoke("experiment_name=stopped", ONE_THREAD))
    assert err.value.reason == "preempted"
    _, parents, found = runs_of(runs_dir, "stopped")
    # the head stage finished its epoch; the partial stage started and stopped after its first step
    assert sorted(
        (r.info.run_name, r.info.status) for r in found if r in parents or r.data.tags.get("stage")
    ) == sorted([(parents[0].info.run_name, "KILLED"), ("head", "FINISHED"), ("partial", "KILLED")])
    killed = [r for r in found if r.info.status == "KILLED"]
    assert all(r.data.tags["stop_reason"] == "preempted" for r in killed)
    state = torch.load(calls[-1] / "last.pt", weights_only=False)
    assert (state["stage_name"], state["stage_epoch"]) == ("partial", 0)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the run

    monkeypatch.setattr(TrainRecipe, "_checkpoint", original)
    train(smoke("experiment_name=stopped", ONE_THREAD, f"resume={calls[-1]}"))
    _assert_same_metrics(runs_dir, "stopped", reference)  # the killed 'partial' run was continued, not duplicated


def test_sigint_before_the_first_epoch_leaves_a_resumable_run(smoke, runs_dir, monkeypatch, reference):
    original = recipe_module.load_splits

    def interrupted_during_setup(c):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the data loads: setup finishes, no step runs
        return original(c)

    monkeypatch.setattr(recipe_module, "load_splits", interrupted_during_setup)
    with pytest.raises(Stopped, match="interrupted"):
        train(smoke("experiment_name=early", ONE_THREAD))
    _, parents, found = runs_of(runs_dir, "early")
    assert len(found) == 1 and parents[0].info.status == "KILLED"
    assert parents[0].data.tags["stop_reason"] == "interrupted"
    out = Path(parents[0].data.tags["output_dir"])
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 0

    monkeypatch.setattr(recipe_module, "load_splits", original)
    train(smoke("experiment_name=early", ONE_THREAD, f"resume={out}"))
    _assert_same_metrics(runs_dir, "early", reference)


# -- real processes, real signals ---------------------------------------------------------------------------------
SMALL = ("debug=tiny", "dataset.windows_per_subject=24", "trainer.max_epochs_per_stage=4")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _cmd(runs_dir: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ttm_experiments.cli.train",
        *SMALL,
        f"paths.runs_dir={runs_dir}",
        f"hydra.run.dir={out}",
        "experiment_name=stop",
    ]


def _signal_at(cmd: list[str], line: str, signals: list[int]) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for text in proc.stdout:
        seen.append(text)
        if line in text:
            for s in signals:
                proc.send_signal(s)
            break
    seen += proc.stdout.read().splitlines(keepends=True)
    proc.wait(timeout=120)
    return proc.returncode, "".join(seen)


@pytest.mark.slow
def test_ttm_train_sigterm_exits_resumable_and_the_same_command_resumes_to_the_reference(tmp_path):
    ref_runs = tmp_path / "reference"
    subprocess.run(_cmd(ref_runs, ref_runs / "out"), check=True, cwd=REPO, env=ENV, capture_output=True, timeout=900)
    runs, out = tmp_path / "stopped", tmp_path / "stopped" / "out"
    code, text = _signal_at(_cmd(runs, out), "[partial] epoch 2/4", [signal.SIGTERM])
    assert code == RESUMABLE, text[-3000:]
    assert "SIGTERM received: finishing the current step" in text and "Exit status 75 (resumable)" in text
    _, parents, found = runs_of(runs, "stop")
    killed = sorted(r.info.run_name for r in found if r.info.status == "KILLED")
    assert killed == sorted([parents[0].info.run_name, "partial"])
    assert all(r.data.tags["stop_reason"] == "preempted" for r in found if r.info.status == "KILLED")
    assert torch.load(out / "last.pt", weights_only=False)["stage_epoch"] == 2

    again = subprocess.run(_cmd(runs, out), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "RESUMING" in again.stdout + again.stderr, again.stderr[-3000:]
    client, parents, found = runs_of(runs, "stop")
    _, ref, _ = runs_of(ref_runs, "stop")
    assert len(parents) == 1 and len(found) == 4 and all(r.info.status == "FINISHED" for r in found)
    # the stop is history once the run continues: no stale stop_reason on a FINISHED run, kept as resumed.after
    for run in (parents[0], next(r for r in found if r.data.tags.get("stage") == "partial")):
        assert "stop_reason" not in run.data.tags and run.data.tags["resumed.after"] == "stop_reason=preempted"
    assert [m.step for m in client.get_metric_history(parents[0].info.run_id, "val/auroc")] == list(range(1, 13))
    keys = [k for k in ref[0].data.metrics if k.startswith(COMPARED)]
    assert {k: parents[0].data.metrics[k] for k in keys} == {k: ref[0].data.metrics[k] for k in keys}


SECOND = """
import os, signal, time
from ttm_experiments.training import signals
with signals.graceful_stop():
    os.kill(os.getpid(), signal.SIG{0})  # one thread: its handler has run when the next call starts
    assert signals.requested() == "{1}", signals.requested()
    print("first handled", flush=True)
    try:
        os.kill(os.getpid(), signal.SIG{0})
        time.sleep(5)
    except KeyboardInterrupt:
        print("second raised KeyboardInterrupt", flush=True)
        raise SystemExit(130)
print("not stopped", flush=True)
"""


@pytest.mark.parametrize(
    "name,reason,code,said",
    [
        ("TERM", "preempted", -signal.SIGTERM, "first handled"),
        ("INT", "interrupted", 130, "second raised KeyboardInterrupt"),
    ],
)
def test_a_second_signal_stops_at_once(name, reason, code, said):
    proc = subprocess.run(
        [sys.executable, "-c", SECOND.format(name, reason)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert said in proc.stdout and "not stopped" not in proc.stdout
    assert "stopping at once" in proc.stderr


def test_inside_a_submitit_job_sigterm_is_left_to_submitit(monkeypatch):
    from ttm_experiments.training.signals import graceful_stop

    def submitit_bypass(signum, frame):  # what submitit installs for SIGTERM in a job
        pass

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    previous = signal.signal(signal.SIGTERM, submitit_bypass)
    sigint_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background (nohup, CI)
    try:
        with graceful_stop():
            assert signal.getsignal(signal.SIGTERM) is submitit_bypass
            assert signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, sigint_before)
        assert signal.getsignal(signal.SIGINT) is sigint_before
    finally:
        signal.signal(signal.SIGTERM, previous)


# a baseline has no optimizer step to stop at: the signal arrives while it fits (sent by the process to itself, so
# the moment is fixed), the job finishes and is recorded, and the multirun starts no second job
BASELINE_MULTIRUN = """
import os, signal, sys
from ttm_experiments.cli import train
from ttm_experiments.models import baselines

fit = baselines.fit_predict
def fit_then_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIG{0})
    return fit(*args, **kwargs)
baselines.fit_predict = fit_then_signal
sys.argv = ["ttm-train", "-m", "backbone=baseline_sqi", "dataset.fold=0,1,2", "debug=tiny",
            "paths.runs_dir={1}", "hydra.sweep.dir={1}/sweep", "experiment_name=stop-baseline"]
train.main()
"""


@pytest.mark.parametrize("name,code", [("TERM", 143), ("INT", 130)])
def test_a_signal_during_a_baseline_multirun_ends_it_after_the_recorded_job(tmp_path, name, code):
    proc = subprocess.run(
        [sys.executable, "-c", BASELINE_MULTIRUN.format(name, tmp_path)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "the run had finished and is recorded; no further job starts" in proc.stderr
    _, parents, found = runs_of(tmp_path, "stop-baseline")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [r.info.status for r in found]
    assert parents[0].data.params["dataset.fold"] == "0" and "test/auroc" in parents[0].data.metrics
