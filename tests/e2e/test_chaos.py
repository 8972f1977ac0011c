"""The chaos test (bench/chaos.py): its checks and kill points, and (slow) kills at random points resumed to the
uninterrupted result. The fault hook it uses is tested in tests/utils/test_faults.py."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys

import pytest

from tests.helpers.configs import REPO


def _load_chaos():
    spec = importlib.util.spec_from_file_location("chaos", REPO / "bench" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


chaos = _load_chaos()


def _record(steps=(1, 2), values=(0.5, 0.25), status="FINISHED", **stage) -> "chaos.Record":
    metrics = {"val/auroc": list(zip(steps, values))}
    stages = {"head": {"status": stage.get("stage_status", "FINISHED"), "metrics": metrics}}
    return chaos.Record(runs={"run": {"status": status, "metrics": metrics, "stages": stages}})


CFG = chaos.CONFIGS["hybrid"]


def test_compare_accepts_the_reference_itself():
    assert chaos.compare(_record(), _record(), CFG) == []


@pytest.mark.parametrize(
    "got, expected",
    [
        (_record(steps=(1, 1), values=(0.5, 0.5)), "steps [1, 1], reference [1, 2]"),  # a duplicate in place of 2
        (_record(steps=(1,), values=(0.5,)), "steps [1], reference [1, 2]"),  # a gap
        (_record(values=(0.5, 0.2500001)), "step 2 is 0.2500001, reference 0.25"),  # not bit-identical
        (_record(status="RUNNING"), "run: MLflow run RUNNING"),
        (_record(stage_status="KILLED"), "run stage head: MLflow run KILLED"),
    ],
)
def test_compare_names_each_difference(got, expected):
    assert any(expected in p for p in chaos.compare(_record(), got, CFG)), chaos.compare(_record(), got, CFG)


def test_read_problems_and_a_lost_trial_fail_the_comparison():
    got = _record()
    got.problems.append("run val/auroc: steps [2] logged more than once")
    assert chaos.compare(_record(), got, CFG) == got.problems
    study = chaos.CONFIGS["optuna"]
    ref = chaos.Record(trials={0: ("COMPLETE", 0.5, {"x": 1}), 1: ("COMPLETE", 0.6, {"x": 2})})
    lost = chaos.Record(trials={0: ("RUNNING", None, {"x": 1}), 1: ("COMPLETE", 0.6, {"x": 2})})
    problems = chaos.compare(ref, lost, study)
    assert problems[0].startswith("study: 2 trials") and any(p.startswith("trial 0: RUNNING") for p in problems)


def test_kill_points_say_which_stage_and_epoch_a_kill_strikes():
    hist = lambda *steps: {"train/loss": [(s, 0.0) for s in steps]}
    record = chaos.Record(
        runs={
            "run": {
                "status": "FINISHED",
                "metrics": {},
                "stages": {
                    "pretrain": {"status": "FINISHED", "metrics": hist(1)},
                    "head": {"status": "FINISHED", "metrics": hist(2)},
                },
            }
        }
    )
    events = ["checkpoint.write", "step", "epoch.ssl", "mlflow.log", "step", "epoch.supervised", "checkpoint.write"]
    kills = chaos.kill_points(chaos.Reference(CFG, record, events, 0.0))
    assert [(k.fault, k.where, k.stage) for k in kills] == [
        ("checkpoint.write:1", "before pretrain epoch 1", None),
        ("step:1", "in pretrain epoch 1", "pretrain"),
        ("epoch.ssl:1", "in pretrain epoch 1", "pretrain"),
        ("mlflow.log:1", "after pretrain epoch 1", None),
        ("step:2", "in head epoch 2", "head"),
        ("epoch.supervised:1", "in head epoch 2", "head"),
        ("checkpoint.write:2", "after head epoch 2", None),
    ]
    chosen = chaos.choose({"hybrid": chaos.Reference(CFG, record, events, 0.0)}, 4, random.Random(0))
    assert len(set(chosen)) == 4
    assert {k.stage for k in chosen} >= {"pretrain", "head"}  # every stage gets a kill before the random rest
    assert {k.point for k in chosen} >= {"checkpoint.write", "mlflow.log"}


@pytest.mark.slow
def test_six_random_kills_of_a_hybrid_run_are_all_survived():
    """SIGKILL at 6 points (seed 1: both SSL stages and the supervised ones, a checkpoint write, MLflow logging),
    each resumed by rerunning its command: metrics and MLflow histories identical to the uninterrupted run."""
    done = subprocess.run(
        [sys.executable, "bench/chaos.py", "--configs", "hybrid", "--kills", "6", "--seed", "1", "--jobs", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    assert "kills survived: 6/6" in done.stdout


@pytest.mark.slow
def test_a_study_killed_inside_a_trial_resumes_to_the_uninterrupted_study(tmp_path):
    """SIGKILL of the sweeper between trial 0's job and its tell, and inside trial 0's job (in its partial
    stage; the basic launcher runs jobs in the sweeper's process): each rerun of the same command adopts trial 0
    (tells what its job recorded / resumes its job from last.pt), asks only trial 1, and ends with the
    uninterrupted study: the same trials, parameters and values, every MLflow run FINISHED, histories exact."""
    ref = chaos.reference(chaos.CONFIGS["optuna"], tmp_path / "reference")
    points = chaos.kill_points(ref)
    kills = [
        next(k for k in points if k.point == "optuna.trial"),
        next(k for k in points if k.stage == "partial" and k.where.startswith("trial 0 ")),
    ]
    for i, kill in enumerate(kills):
        outcome = chaos.chaos(kill, ref, tmp_path / f"kill-{i}")
        assert outcome.ok, (kill, outcome.detail)
