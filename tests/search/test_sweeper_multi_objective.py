"""A multi-objective Optuna study of ttm-train, end to end: `optimized_metric` as a list, the Pareto front in the
released plugin's results format, a Pareto plot and the front's trials in the study's MLflow run, and the pick
that the nested-CV report uses.

One real study (debug=tiny, 3 trials, a real SQLite Optuna storage and MLflow store in a tmp dir) through the
real CLI. Each trial's objectives must be the two validation metrics of its own run at its best epoch, as MLflow
recorded them (the job selects that epoch by the first objective).
"""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf

from tests.helpers.runs import cli, run_cli, train_runs

METRICS = ["val/auroc", "val/balanced_acc"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("mo")
    runs, sweep = base / "runs", base / "sweep"
    proc = run_cli(
        runs,
        "hydra/sweeper=optuna",
        f"optimized_metric=[{','.join(METRICS)}]",
        "hydra.sweeper.direction=[maximize,maximize]",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.study_name=mo",
        "hydra.sweeper.sampler.seed=0",
        "optim.lr=tag(log, interval(1e-4, 3e-2))",
        "unfreeze.last_n=choice(0, 1)",
        "experiment_name=mo",
        f"hydra.sweep.dir={sweep}",
    )
    from mlflow.tracking import MlflowClient

    return SimpleNamespace(
        proc=proc,
        runs=runs,
        sweep=sweep,
        study=optuna.load_study(study_name="mo", storage=f"sqlite:///{runs}/optuna.db"),
        client=MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db"),
    )


@pytest.mark.slow  # one real study of three short trainings (~40 s), or two CLI runs
def test_each_trial_gets_its_runs_metrics_at_its_best_epoch(study):
    assert [d.name for d in study.study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert study.study.metric_names == METRICS
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in train_runs(study.client, "mo")}
    trials = study.study.get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        run = by_trial[t.number]
        assert run.data.params["optimized_metric"] == "val/auroc"  # the job selects its epoch by the first
        epoch = int(run.data.metrics["best/epoch"])
        history = {m.step: m.value for m in study.client.get_metric_history(run.info.run_id, "val/balanced_acc")}
        assert t.values == pytest.approx([run.data.metrics["best/val_auroc"], history[epoch]])


@pytest.mark.slow  # one real study of three short trainings (~40 s), or two CLI runs
def test_results_are_the_released_solutions_plus_the_pick(study):
    out = OmegaConf.to_container(OmegaConf.load(study.sweep / "optimization_results.yaml"))
    front = sorted(study.study.best_trials, key=lambda t: t.number)
    assert out["name"] == "optuna" and "best_params" not in out
    assert out["solutions"] == [{"params": t.params, "values": t.values} for t in front]
    assert out["front_trials"] == [t.number for t in front] and out["pareto_pick"] in out["front_trials"]
    assert "Pareto front (val/auroc, val/balanced_acc)" in study.proc.stdout


@pytest.mark.slow  # one real study of three short trainings (~40 s), or two CLI runs
def test_the_study_run_holds_the_pareto_plot_and_the_fronts_trials(study):
    client = study.client
    exp = client.get_experiment_by_name("mo")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`ttm.kind` = 'study'")
    front = {t.number for t in study.study.best_trials}
    assert set(map(int, parent.data.tags["pareto.trials"].split())) == front
    pick = int(parent.data.tags["pareto.pick"])
    files = {a.path for d in ("study", "pareto", "best") for a in client.list_artifacts(parent.info.run_id, d)}
    assert "study/pareto.png" in files and "best/command.sh" in files
    assert {f"pareto/trial-{n}.sh" for n in front} <= files
    for run in train_runs(client, "mo"):
        n = int(run.data.tags["optuna.trial"])
        assert (run.data.tags.get("optuna.pareto") == "true") == (n in front)
        assert (run.data.tags.get("optuna.pareto_pick") == "true") == (n == pick)


def test_pick_rule_and_the_nested_report_takes_the_pick():
    from ttm_experiments.report.nested import best_trials
    from ttm_experiments.search.best import pick_from_front

    def trial(number, *values):
        return SimpleNamespace(number=number, values=list(values))

    front = [trial(0, 0.9, 0.50), trial(1, 0.8, 0.70), trial(2, 0.6, 0.75)]
    # scaled: t0 (1, 0), t1 (0.67, 0.8), t2 (0, 1): t1 is nearest to (1, 1)
    assert pick_from_front(front, ["maximize", "maximize"]).number == 1
    # a minimised second objective flips its scale: t0 (1, 1) is the ideal point itself
    assert pick_from_front(front, ["maximize", "minimize"]).number == 0

    def row(name, pick=None):
        tags = {"optuna.study": "s"} | ({"optuna.pareto_pick": pick} if pick else {})
        return SimpleNamespace(name=name, tags=tags, state="finished", metrics={"test/auroc": 0.7}, params={})

    ranked = [row("first-by-objective", "false"), row("picked", "true")]
    assert best_trials(ranked)["s"].name == "picked"
    assert best_trials([row("only")])["s"].name == "only"  # a single-objective study: the ranking decides


@pytest.mark.slow  # one real study of three short trainings (~40 s), or two CLI runs
def test_several_objectives_outside_a_study_or_with_a_pruner_are_one_line_errors(tmp_path):
    import sys

    from tests.helpers.configs import REPO

    plain = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttm_experiments.cli.train",
            "debug=tiny",
            f"paths.runs_dir={tmp_path}",
            "optimized_metric=[val/auroc,val/balanced_acc]",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode != 0 and "is not one metric" in plain.stderr and "Traceback" not in plain.stderr
    pruned = subprocess.run(
        cli(
            tmp_path,
            "hydra/sweeper=optuna",
            "optimized_metric=[val/auroc,val/balanced_acc]",
            "hydra.sweeper.direction=[maximize,maximize]",
            "hydra.sweeper.pruner=median",
            "optim.lr=interval(1e-4, 1e-3)",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pruned.returncode != 0 and "prunes single-objective studies only" in pruned.stderr
    assert "Traceback" not in pruned.stderr
