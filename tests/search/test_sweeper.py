"""The Optuna sweeper (`hydra/sweeper: optuna`), per-epoch pruning, launchers and the MLflow run tree.

Everything runs through the real CLI (`python -m ttm_experiments.cli.train -m ...`) on debug=tiny, into a
temporary runs dir: the Optuna storage is `<runs>/optuna.db`, MLflow `<runs>/mlflow.db`.

The study of the module fixture is deterministic: a grid over `trainer.max_epochs_per_stage` (1 or 2, i.e.
3 or 6 epochs) x `unfreeze.last_n` (1, or 99 = out of range) with a threshold pruner that prunes every trial
still running at epoch 4, so: (1, 1) COMPLETE, (2, 1) PRUNED at epoch 4, (*, 99) FAIL at setup. A second
invocation, with a hydra-optuna-sweeper style search space file taken over unchanged, adds two trials to the
same study through the joblib launcher.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from tests.helpers.configs import compose_config
from tests.helpers.runs import children, cli, finish, run_cli, start, train_runs
from ttm_experiments.search.space import trial_name

PRUNE_SPACE = """\
# @package _global_
# a study whose trial states do not depend on the data: see the module docstring
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: grid
optimized_metric: val/auroc
hydra:
  mode: MULTIRUN
  sweeper:
    study_name: t-prune
    direction: maximize
    n_trials: 4
    max_failure_rate: 1.0
    pruner: {type: threshold, lower: 1.01, n_warmup_steps: 4}
    params:
      trainer.max_epochs_per_stage: choice(1, 2)
      unfreeze.last_n: choice(1, 99)
"""

# The lightning-hydra-template's hparams_search/mnist_optuna.yaml for hydra-optuna-sweeper, as it is, with
# this project's keys in `params` (and fewer trials: n_trials is overridden on the command line).
TEMPLATE_SPACE = """\
# @package _global_

# example hyperparameter optimization of some experiment with Optuna:
# python train.py -m hparams_search=mnist_optuna experiment=example

defaults:
  - override /hydra/sweeper: optuna

# choose metric which will be optimized by Optuna
# make sure this is the correct name of some metric logged in lightning module!
optimized_metric: "val/auroc"

# here we define Optuna hyperparameter search
# it optimizes for value returned from function with @hydra.main decorator
# docs: https://hydra.cc/docs/next/plugins/optuna_sweeper
hydra:
  mode: "MULTIRUN" # set hydra to multirun by default if this config is attached

  sweeper:
    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper

    # storage URL to persist optimization results
    # for example, you can use SQLite if you set 'sqlite:///example.db'
    storage: null

    # name of the study to persist optimization results
    study_name: null

    # number of parallel workers
    n_jobs: 1

    # 'minimize' or 'maximize' the objective
    direction: maximize

    # total number of runs that will be executed
    n_trials: 20

    # choose Optuna hyperparameter sampler
    # you can choose bayesian sampler (tpe), random search (without optimization), grid sampler, and others
    # docs: https://optuna.readthedocs.io/en/stable/reference/samplers.html
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 1234
      n_startup_trials: 10 # number of random sampling runs before optimization starts

    # define hyperparameter search space
    params:
      optim.lr: interval(0.0001, 0.01)
      optim.batch_size: choice(16, 32, 64)
      optim.layer_decay: interval(0.6, 1.0)
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study's first invocation; then, at the same time, two more sweepers on the same study (joblib and
    the basic launcher) and a submitit grid on a fresh store."""
    import optuna

    base = tmp_path_factory.mktemp("search")
    runs, conf, cache = base / "runs", base / "conf", base / "cache"
    (conf / "hparams_search").mkdir(parents=True)
    (conf / "hparams_search" / "t_prune.yaml").write_text(PRUNE_SPACE)
    (conf / "hparams_search" / "lht_style.yaml").write_text(TEMPLATE_SPACE)
    searchpath = f"hydra.searchpath=[file://{conf}]"
    first = run_cli(runs, "hparams_search=t_prune", searchpath, "experiment_name=study", cache=cache)
    resume = ["hparams_search=lht_style", searchpath, "experiment_name=study", "hydra.sweeper.study_name=t-prune"]
    second = start(
        cli(
            runs,
            *resume,
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",
            "hydra/launcher=joblib",
            f"hydra.sweep.dir={base}/sweep-joblib",
            cache=cache,
        )
    )
    # a second sweeper on the same storage at the same time: they share the study
    third = start(cli(runs, *resume, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={base}/sweep-basic", cache=cache))
    # a fresh store: both jobs start together, so the store must exist before they do (PrepareTracking)
    grid_runs = base / "grid-runs"
    grid = start(
        cli(grid_runs, "unfreeze.last_n=0,1", "hydra/launcher=submitit_local", "experiment_name=grid", cache=cache)
    )
    results = {"second": finish(second), "third": finish(third), "grid": finish(grid)}
    storage = f"sqlite:///{runs}/optuna.db"
    return {
        "runs": runs,
        "conf": conf,
        "base": base,
        "first": first,
        **results,
        "grid_runs": grid_runs,
        "study": optuna.load_study(study_name="t-prune", storage=storage),
        "client": MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db"),
    }


def test_trial_states_follow_pruner_and_failures(study):
    trials = study["study"].get_trials()
    assert len(trials) == 7
    first = trials[:4]
    for t in first:
        if t.params["unfreeze.last_n"] == 99:
            assert t.state.name == "FAIL", t
            assert "out of range" in t.user_attrs["fail_reason"]
        elif t.params["trainer.max_epochs_per_stage"] == 2:
            assert t.state.name == "PRUNED", t
            assert max(t.intermediate_values) == 4  # pruned after epoch 4 of 6
            assert "mlflow.run_id" in t.user_attrs
        else:
            assert t.state.name == "COMPLETE", t
            assert sorted(t.intermediate_values) == [1, 2, 3]
            assert 0.0 <= t.value <= 1.0
    assert sorted(t.state.name for t in first) == ["COMPLETE", "FAIL", "FAIL", "PRUNED"]
    assert "1 complete, 1 pruned, 2 failed" in study["first"].stdout


def test_later_invocations_add_trials_to_the_same_study(study):
    trials = study["study"].get_trials()
    added = trials[4:]
    assert [t.number for t in added] == [4, 5, 6]
    assert all(t.state.name == "COMPLETE" for t in added)
    assert all(set(t.params) == {"optim.lr", "optim.batch_size", "optim.layer_decay"} for t in added)
    # two sweepers ran at once on the storage: 2 + 1 trials, each sweeper its own
    assert "this run: 2 trials" in study["second"].stdout and "this run: 1 trials" in study["third"].stdout
    for proc in (study["second"], study["third"]):
        assert "study 't-prune'" in proc.stdout + proc.stderr and "resumes with" in proc.stdout + proc.stderr
    sweeps = {r.data.tags["optuna.trial"]: r.data.tags["sweep"] for r in train_runs(study["client"], "study")}
    assert sorted(Path(sweeps[str(t.number)]).name for t in added) == ["sweep-basic", "sweep-joblib", "sweep-joblib"]


def test_template_style_file_is_accepted_unchanged(study):
    text = (study["conf"] / "hparams_search" / "lht_style.yaml").read_text()
    assert "_target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper" in text
    assert "storage: null" in text  # -> the default storage under paths.runs_dir, shared with the jobs
    assert (study["runs"] / "optuna.db").is_file()
    # the best trial as a ready-to-run command, which composes. `second` ran at the same time as `third`: its best
    # trial is the study's best when it finished, which need not be the study's best now
    stdout = study["second"].stdout
    best = study["study"].trials[int(re.search(r"best trial (\d+):", stdout).group(1))]
    line = next(ln for ln in stdout.splitlines() if "reproduce it:" in ln)
    args = shlex.split(line.split("reproduce it:", 1)[1])
    assert args[0] == "ttm-train"
    # the only search key it carries is its provenance (nested CV: the report flags a config tuned on another fold)
    assert [a.partition("=")[0] for a in args if a.startswith("search.")] == ["search.tuned_in"]
    assert not any(a.startswith(("hparams_search", "hydra/", "hydra.sweeper", "run_name")) for a in args)
    for name in best.params:
        assert any(a.startswith(f"{name}=") for a in args), (name, args)
    cfg = compose_config([a for a in args[1:] if not a.startswith("hydra.searchpath")])
    assert cfg.search.trial_number is None and cfg.search.study_name is None
    assert cfg.search.tuned_in == study["study"].study_name
    for name, value in best.params.items():
        assert OmegaConf.select(cfg, name) == pytest.approx(value)


def test_mlflow_run_tree(study):
    client, optuna_study = study["client"], study["study"]
    exp = client.get_experiment_by_name("study")
    study_runs = client.search_runs([exp.experiment_id], "tags.`ttm.kind` = 'study'")
    assert len(study_runs) == 1, "a resumed study keeps its one parent run"
    parent = study_runs[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.study"] == "t-prune"
    assert parent.info.run_name == "study t-prune"  # the study's run is named after its study
    assert parent.data.tags["optuna.storage"].endswith("/optuna.db")
    # the best trial of the sweeper that finished last: a complete trial, with its value (two sweepers ran at once,
    # so which one wrote last, and so which trial this is, depends on timing)
    best = optuna_study.trials[int(parent.data.tags["best.trial"])]
    assert best.state.name == "COMPLETE" and parent.data.metrics["best/value"] == pytest.approx(best.value)
    assert parent.data.tags["best.command"].startswith("ttm-train ")
    assert any(k.startswith("importance/") for k in parent.data.metrics)
    files = {a.path for d in ("best", "study") for a in client.list_artifacts(parent.info.run_id, d)}
    assert {"best/config.yaml", "best/command.sh", "study/history.png", "study/trials.csv"} <= files

    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children(client, parent)}
    assert sorted(by_trial) == [t.number for t in optuna_study.get_trials() if t.state.name != "FAIL"]
    for t in optuna_study.get_trials():
        if t.state.name == "FAIL":
            continue  # failed before its run started
        run = by_trial[t.number]
        assert run.info.run_id == t.user_attrs["mlflow.run_id"]
        assert run.data.tags["optuna.state"] == t.state.name
        assert run.data.tags["optuna.study"] == "t-prune"
        assert run.data.tags["mlflow.runName"] == trial_name(t.number, t.params)  # `trial 3: lr=0.000412 ...`
        assert run.data.tags["mlflow.runName"].startswith(f"trial {t.number}: ")
        stages = {r.data.tags["stage"]: r.info.status for r in children(client, run)}
        if t.state.name == "PRUNED":
            assert run.info.status == "KILLED" and "pruned" in run.data.tags
            assert stages == {"head": "FINISHED", "partial": "KILLED"}  # epoch 4 = second epoch of partial
            from ttm_experiments.training.resume import STATE_FILE, load_state

            state = load_state(Path(run.data.tags["output_dir"]) / STATE_FILE)  # never resumed
            assert state["finished"] and state["pruned"]
        else:
            assert run.info.status == "FINISHED"
            assert stages == {"head": "FINISHED", "partial": "FINISHED", "full": "FINISHED"}
            assert run.data.metrics["best/val_auroc"] == pytest.approx(t.value)


def test_joblib_trials_write_two_complete_runs(study):
    client = study["client"]
    sweep = str(study["base"] / "sweep-joblib")
    joblib_runs = [r for r in train_runs(client, "study") if r.data.tags.get("sweep") == sweep]
    assert len(joblib_runs) == 2 and all(r.info.status == "FINISHED" for r in joblib_runs)
    assert sorted(r.data.tags["sweep.job"] for r in joblib_runs) == ["0", "1"]
    assert {r.data.tags["optuna.state"] for r in joblib_runs} == {"COMPLETE"}


def test_submitit_local_grid_writes_two_complete_runs(study):
    client = MlflowClient(tracking_uri=f"sqlite:///{study['grid_runs']}/mlflow.db")
    parents = train_runs(client, "grid")
    assert sorted(r.data.params["unfreeze.last_n"] for r in parents) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in parents)
    assert len({r.data.tags["sweep"] for r in parents}) == 1
    for run in parents:
        assert sorted(r.data.tags["stage"] for r in children(client, run)) == ["full", "head", "partial"]
