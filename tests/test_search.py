"""The Optuna sweeper (`hydra/sweeper: optuna`), per-epoch pruning, launchers and the MLflow run tree.

Everything runs through the real CLI (`python -m ttm_experiments.cli.train -m ...`) on debug=smoke, into a
temporary runs dir: the Optuna storage is `<runs>/optuna.db`, MLflow `<runs>/mlflow.db`.

The study of the module fixture is deterministic: a grid over `trainer.max_epochs_per_stage` (1 or 2, i.e.
3 or 6 epochs) x `unfreeze.last_n` (1, or 99 = out of range) with a threshold pruner that prunes every trial
still running at epoch 4, so: (1, 1) COMPLETE, (2, 1) PRUNED at epoch 4, (*, 99) FAIL at setup. A second
invocation, with a hydra-optuna-sweeper style search space file taken over unchanged, adds two trials to the
same study through the joblib launcher.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, compose_config
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

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
    n_trials: 4
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


def cli(runs: Path, *args: str, cache: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ttm_experiments.cli.train",
        "-m",
        "debug=smoke",
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
    # the best trial as a ready-to-run command, which composes
    line = next(ln for ln in study["second"].stdout.splitlines() if "reproduce it:" in ln)
    args = shlex.split(line.split("reproduce it:", 1)[1])
    assert args[0] == "ttm-train"
    # the only search key it carries is its provenance (nested CV: the report flags a config tuned on another fold)
    assert [a.partition("=")[0] for a in args if a.startswith("search.")] == ["search.tuned_in"]
    assert not any(a.startswith(("hparams_search", "hydra/", "hydra.sweeper", "run_name")) for a in args)
    best = study["study"].best_trial
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
    best = optuna_study.best_trial
    assert parent.data.metrics["best/value"] == pytest.approx(best.value)
    assert parent.data.tags["best.trial"] == str(best.number)
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


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("optim.lrr=tag(log, interval(1e-5, 1e-3))", "'optim.lrr': optim.lrr=1e-05 does not fit the config"),
        ("optim.lr=interval(1e-2, 1e-5)", "'optim.lr': invalid distribution 'interval(1e-2, 1e-5)'"),
        ("unfreeze.last_n=choice(1, a)", "'unfreeze.last_n': unfreeze.last_n=a does not fit the config"),
        ("optim.lr=interval(0, 1e-3)", "'optim.lr': optim.lr=0.0 is invalid for the job"),
    ],
)
def test_bad_search_space_is_rejected_before_anything_runs(tmp_path, bad, needle):
    """The real sweeper, instantiated by Hydra from hparams_search=unfreeze_lr, given a bad command-line sweep."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext

    from ttm_experiments.cli.common import CONFIG_DIR
    from ttm_experiments.search.space import SearchSpaceError

    args = ["hparams_search=unfreeze_lr", "debug=smoke", f"paths.runs_dir={tmp_path}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=args, return_hydra_config=True)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(cfg))
        sweeper = Plugins.instance().instantiate_sweeper(hydra_context=context, task_function=lambda c: 0.0, config=cfg)
        with pytest.raises(SearchSpaceError) as err:
            sweeper.sweep(arguments=[*args, bad])
    assert needle in str(err.value)
    assert not (tmp_path / "optuna.db").exists()  # no study, no trial


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"optim.lr": "tag(log, interval(0, 1e-3))"}, "'optim.lr': invalid distribution"),
        ({"optim.lr": "interval(1e-2, 1e-4)"}, "'optim.lr': invalid distribution"),
        ({"optim.lr": "tag(logg, interval(1e-5, 1e-3))"}, "unknown tag"),
        ({"unfreeze.last_n": "range(4, 1)"}, "'unfreeze.last_n': invalid distribution"),
        ({"unfreeze.last_n": "range(0, 4, step=-1)"}, "'unfreeze.last_n': invalid distribution"),
        ({"optim.batch_size": "choice(16, 16)"}, "'optim.batch_size': invalid distribution"),
    ],
)
def test_invalid_distributions_are_named(params, needle):
    from ttm_experiments.search.space import SearchSpaceError, parse

    with pytest.raises(SearchSpaceError, match=needle.replace("(", r"\(")):
        parse(params, None, [])


def test_search_space_syntax_of_hydra_optuna_sweeper():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from ttm_experiments.search.space import grid, parse

    space = parse(
        {
            "optim.lr": "tag(log, interval(1e-5, 3e-3))",
            "unfreeze.last_n": "range(0, 4)",
            "optim.batch_size": "choice(16, 32)",
            "unfreeze": "pattern,depth",
            "optim.layer_decay": "0.8",
        },
        None,
        ["optim.weight_decay=0.1", "unfreeze.last_n=interval(1, 3)"],
        int_keys=lambda key: key == "unfreeze.last_n",
    )
    d = space.distributions
    assert d["optim.lr"] == FloatDistribution(1e-5, 3e-3, log=True)
    assert d["unfreeze.last_n"] == IntDistribution(1, 3)  # the command line wins; an int key samples ints
    assert d["optim.batch_size"] == CategoricalDistribution([16, 32])
    assert d["unfreeze"] == CategoricalDistribution(["pattern", "depth"])
    assert space.fixed == {"optim.layer_decay": "optim.layer_decay=0.8", "optim.weight_decay": "optim.weight_decay=0.1"}
    assert grid("r", parse({"r": "range(0, 4)"}, None, []).distributions["r"]) == [0, 1, 2, 3, 4]
    old = parse(None, {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}, [])
    assert old.distributions["optim.lr"] == FloatDistribution(1e-4, 1e-2, log=True)


def test_pruner_specs():
    import optuna

    from ttm_experiments.errors import ConfigError
    from ttm_experiments.tracking.optuna_storage import build_pruner, pruner_spec

    assert (
        pruner_spec({"type": "median", "n_startup_trials": 3, "n_warmup_steps": 5})
        == "median:n_startup_trials=3,n_warmup_steps=5"
    )
    assert pruner_spec(None) == "none" and pruner_spec("hyperband") == "hyperband"
    assert pruner_spec({"_target_": "optuna.pruners.MedianPruner"}) == "median"
    assert isinstance(build_pruner("median:n_warmup_steps=5"), optuna.pruners.MedianPruner)
    assert isinstance(build_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match="unknown pruner 'medain'"):
        pruner_spec("medain")
    with pytest.raises(ConfigError, match="n_warmup"):
        pruner_spec({"type": "median", "n_warmup": 3})


# -- the team set-up: a real tracking server --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_grid_against_a_real_mlflow_server(tmp_path):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        import urllib.request

        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the MLflow server did not start in 120 s"
            time.sleep(0.5)
        runs = tmp_path / "runs"
        run_cli(
            runs, "unfreeze.last_n=0,1", "hydra/launcher=joblib", "experiment_name=server-grid", f"tracking.uri={uri}"
        )
        client = MlflowClient(tracking_uri=uri)
        parents = train_runs(client, "server-grid")
        assert sorted(r.data.params["unfreeze.last_n"] for r in parents) == ["0", "1"]
        assert all(r.info.status == "FINISHED" for r in parents)
        for run in parents:
            assert "test/auroc" in run.data.metrics
            assert len(client.get_metric_history(run.info.run_id, "val/auroc")) == 3
            assert sorted(r.data.tags["stage"] for r in children(client, run)) == ["full", "head", "partial"]
            # artifacts go through the server (proxied), not through a shared file system path
            assert client.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
            assert "test/confusion_matrix.json" in {a.path for a in client.list_artifacts(run.info.run_id, "test")}
        assert not (runs / "mlflow.db").exists()
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            server.wait(timeout=10)
        log.close()


def test_values_survive_the_override_round_trip():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ttm_experiments.search.space import format_value, quote

    parser = OverridesParser.create()
    for text in [
        "sqlite:////tmp/a b/optuna.db",
        "it's",
        "back\\slash\\",
        "median:n_startup_trials=3,n_warmup_steps=5",
        "postgresql://u:p@h/db?x=1",
    ]:
        assert parser.parse_override(f"k={quote(text)}").value() == text
    for value in [3e-05, 0.1, 4, True, None, "depth"]:
        assert parser.parse_override(f"k={format_value(value)}").value() == value


def test_journal_file_storage_is_shared_by_path(tmp_path):
    import optuna

    from ttm_experiments.tracking.optuna_storage import load_study, normalize_storage, open_storage, trial_id

    url = normalize_storage(str(tmp_path / "study.journal"))
    study = optuna.create_study(study_name="j", storage=open_storage(url), direction="maximize")
    number = study.ask().number
    seen = load_study("j", url, "median")  # what a job does, by URL only
    assert isinstance(seen.pruner, optuna.pruners.MedianPruner)
    assert open_storage(url).get_trial(trial_id(url, "j", number)).state.name == "RUNNING"
