"""What MLflow users see: run names, the splits as MLflow datasets, system metrics, a quiet console, and a
multirun's jobs in one experiment with their sweep tags."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.configs import REPO
from ttm_experiments.errors import ConfigError
from ttm_experiments.search.space import trial_name
from ttm_experiments.tracking.run_names import describe_overrides, run_name


# -- run names ------------------------------------------------------------------------------------------------
def test_override_names_drop_noise_shorten_keys_and_cap_the_length():
    assert (
        describe_overrides(
            [
                "debug=tiny",
                "unfreeze.last_n=2",
                "optim.lr=0.001",
                "hydra.verbose=true",
                "paths.runs_dir=/tmp/x",
                "tracking.uri=sqlite:///a.db",
                "search.trial_number=3",
                "backbone=ttm_512",
            ]
        )
        == "last_n=2 lr=0.001 backbone=ttm_512"
    )
    assert (
        describe_overrides(["optim.lr=1", "other.lr=2", "+trainer.max_batches=3"])
        == "optim.lr=1 other.lr=2 max_batches=3"
    )
    long = describe_overrides([f"unfreeze.pattern={'x' * 200}"])
    assert len(long) == 96 and long.endswith("…")


def test_run_name_precedence():
    assert run_name(explicit=None, overrides=["unfreeze.last_n=1"], backbone="b", schedule="s") == "last_n=1"
    assert (
        run_name(explicit=None, overrides=["debug=tiny"], backbone="ttm_tiny", schedule="progressive")
        == "ttm_tiny progressive"
    )
    assert run_name(explicit="mine", overrides=["unfreeze.last_n=1"], backbone="b", schedule="s") == "mine"
    assert trial_name(3, {"optim.lr": 0.000412345, "unfreeze.last_n": 2}) == "trial 3: lr=0.000412 last_n=2"


# -- the splits as MLflow datasets ------------------------------------------------------------------------------
def _logged_inputs(smoke, fold: int):
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.tracking.mlflow_tracker import MlflowTracker
    from ttm_experiments.training.recipe import RunInfo, load_splits, open_run

    c = to_config(smoke(f"dataset.fold={fold}", "experiment_name=inputs"))
    tracker = MlflowTracker(c.tracking.uri, c.experiment_name)
    open_run(tracker, c, RunInfo(output_dir=REPO, config_yaml=""), load_splits(c), {})
    tracker.end_run()
    run = MlflowClient(c.tracking.uri).get_run(tracker.run_id)
    return {d.dataset.name: d for d in run.inputs.dataset_inputs}


def test_a_dataset_stored_by_another_run_between_lookup_and_insert_is_linked_not_an_error(smoke):
    """Parallel jobs logging the same split race inside MLflow's store (it looks the dataset up, then inserts it).
    Here the other run's insert lands in that gap, through another connection to the real SQLite store: the
    store's insert fails on the unique key, and the run must still end up with its three inputs."""
    import sqlite3

    from sqlalchemy import event

    from ttm_experiments.config.spec import to_config
    from ttm_experiments.tracking.mlflow_tracker import MlflowTracker
    from ttm_experiments.training.inputs import split_inputs
    from ttm_experiments.training.recipe import load_splits

    c = to_config(smoke("experiment_name=race"))
    splits = load_splits(c)
    inputs = split_inputs(splits, dataset="synthetic", fold=0, root=None, split_seed=0)
    tracker = MlflowTracker(c.tracking.uri, c.experiment_name)
    tracker.start_run("mine", {})
    engine = tracker.client._tracking_client.store.engine
    clashes = []

    def other_run_inserts_first(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO DATASETS") and not clashes:
            rows = parameters if executemany else [parameters]
            with sqlite3.connect(c.tracking.uri.removeprefix("sqlite:///"), timeout=20) as other:
                other.executemany(statement, rows)
            clashes.append(len(rows))

    event.listen(engine, "before_cursor_execute", other_run_inserts_first)
    try:
        tracker.log_inputs(inputs)
    finally:
        event.remove(engine, "before_cursor_execute", other_run_inserts_first)
    tracker.end_run()
    assert clashes == [3]  # the clash happened: the store's first insert met the other run's rows
    run = MlflowClient(c.tracking.uri).get_run(tracker.run_id)
    assert sorted(d.dataset.name for d in run.inputs.dataset_inputs) == [
        "synthetic fold 0 test",
        "synthetic fold 0 train",
        "synthetic fold 0 val",
    ]


def test_splits_are_logged_as_datasets_with_digests_of_the_windows(smoke):
    first, again, other = _logged_inputs(smoke, 0), _logged_inputs(smoke, 0), _logged_inputs(smoke, 1)
    assert sorted(first) == ["synthetic fold 0 test", "synthetic fold 0 train", "synthetic fold 0 val"]
    digests = {name: d.dataset.digest for name, d in first.items()}
    assert all(len(v) == 16 for v in digests.values()) and len(set(digests.values())) == 3
    assert {n: d.dataset.digest for n, d in again.items()} == digests  # the same data: the same digests
    for split in ("train", "val", "test"):  # another fold: other windows in each split, other digests
        assert other[f"synthetic fold 1 {split}"].dataset.digest != digests[f"synthetic fold 0 {split}"]
    # fold 0 validates on the fold that fold 1 tests on: the same windows, the same digest
    assert other["synthetic fold 1 test"].dataset.digest == digests["synthetic fold 0 val"]
    train = first["synthetic fold 0 train"]
    tags = {t.key: t.value for t in train.tags}
    assert tags["mlflow.data.context"] == "training" and int(tags["windows"]) == int(tags["n_poor"]) + int(
        tags["n_good"]
    )
    assert train.dataset.source_type == "code" and '"split_seed": "0"' in train.dataset.source
    assert '"features_shape": [' in train.dataset.profile


def test_digest_covers_every_window(monkeypatch):
    import numpy as np

    from ttm_experiments.data.base import WindowSet
    from ttm_experiments.training import inputs

    x = np.zeros((30_000, 1, 8), np.float32)  # more values than MLflow's own digest reads (10,000)
    ws = WindowSet(x, np.zeros(30_000, np.int64), np.arange(30_000), ("poor", "good"), 1.0)
    changed = x.copy()
    changed[-1, 0, -1] = 1.0
    ws2 = WindowSet(changed, ws.labels, ws.subjects, ws.class_names, 1.0)
    whole = inputs.windows_digest(ws2)
    assert inputs.windows_digest(ws) != whole  # the last value of the last window counts
    monkeypatch.setattr(inputs, "CHUNK_BYTES", 100)  # a few rows at a time: the same digest
    assert inputs.windows_digest(ws2) == whole


# -- a quiet console ------------------------------------------------------------------------------------------
def test_quiet_mlflow_unless_verbose(monkeypatch):
    from ttm_experiments.tracking.console import quiet_mlflow

    for name in ("MLFLOW_LOGGING_LEVEL", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        monkeypatch.delenv(name, raising=False)
    levels = {n: logging.getLogger(n).level for n in ("mlflow", "alembic")}
    try:
        quiet_mlflow(False)
        assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
        assert logging.getLogger("mlflow").level == logging.getLogger("alembic").level == logging.WARNING
        quiet_mlflow(["mlflow"])  # hydra.verbose=mlflow
        assert os.environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG" and logging.getLogger("mlflow").level == logging.DEBUG
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


# -- a real 2-job multirun: names, datasets, system metrics, console, sweep tags ---------------------------------
@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    """`ttm-train -m` with two jobs (the basic launcher) into a fresh store: its output and its runs."""
    runs_dir = tmp_path_factory.mktemp("multirun") / "runs"
    cmd = [
        sys.executable,
        "-m",
        "ttm_experiments.cli.train",
        "-m",
        "debug=tiny",
        "unfreeze.last_n=1,2",
        "optim.lr=0.001",
        "tracking.log_system_metrics=true",
        "tracking.system_metrics_interval_s=3600",
        f"paths.runs_dir={runs_dir}",
        "experiment_name=named",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_LOGGING_LEVEL", None)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    return proc, client, client.search_runs([client.get_experiment_by_name("named").experiment_id])


def test_multirun_names_datasets_system_metrics_and_quiet_output(multirun):
    proc, client, runs = multirun
    output = proc.stdout + proc.stderr
    for chatter in (
        "Creating initial MLflow database tables",
        "Context impl",
        "alembic",
        "View run",
        "Started monitoring system metrics",
    ):
        assert chatter not in output
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_name for r in parents) == ["last_n=1 lr=0.001", "last_n=2 lr=0.001"]
    assert sorted(r.info.run_name for r in runs if r not in parents) == [
        "full",
        "full",
        "head",
        "head",
        "partial",
        "partial",
    ]
    for parent in parents:
        names = {d.dataset.name for d in client.get_run(parent.info.run_id).inputs.dataset_inputs}
        assert names == {f"synthetic fold 0 {s}" for s in ("train", "val", "test")}
        # one sample when the job starts and one when it ends: no interval elapses in a smoke job
        assert _system_steps(client.tracking_uri, parent.info.run_id) == [0, 1]
        assert "system/system_memory_usage_megabytes" in parent.data.metrics


def test_multirun_grid_puts_every_job_in_one_experiment_with_a_sweep_tag(multirun):
    _, _, runs_found = multirun
    parents = [r for r in runs_found if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.params["unfreeze.last_n"] for r in parents) == ["1", "2"]
    assert len({r.data.tags["sweep"] for r in parents}) == 1
    assert sorted(r.data.tags["sweep.job"] for r in parents) == ["0", "1"]
    assert len(runs_found) == 8 and all(r.info.status == "FINISHED" for r in runs_found)


# -- system metrics: a sample when a run starts and when it ends, however short it is ---------------------------
def _system_steps(uri: str, run_id: str) -> list[int]:
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "system/cpu_utilization_percentage")
    return sorted(m.step for m in history)


def test_a_run_shorter_than_the_interval_records_system_metrics_at_its_start_and_end(runs_dir):
    from ttm_experiments.tracking.mlflow_tracker import MlflowTracker

    uri = f"sqlite:///{runs_dir}/mlflow.db"
    # an hour between samples: only the start and end samples can be there, whatever the machine's speed
    tracker = MlflowTracker(uri, "sys", log_system_metrics=True, system_metrics_interval_s=3600)
    run_id = tracker.start_run("short", {})
    assert tracker._monitor.sampling_interval == 3600  # the config's interval, not MLflow's default
    assert _system_steps(uri, run_id) == [0]  # written before start_run returns
    tracker.end_run()
    assert _system_steps(uri, run_id) == [0, 1]
    metrics = MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics
    assert "system/system_memory_usage_megabytes" in metrics and "system/disk_usage_megabytes" in metrics

    resumed = MlflowTracker(uri, "sys", log_system_metrics=True, system_metrics_interval_s=3600)
    resumed.attach(run_id, None)  # a resumed run continues the steps of the stopped process
    resumed.end_run()
    assert _system_steps(uri, run_id) == [0, 1, 2, 3]


def test_the_config_interval_wins_over_mlflows_environment_variable(runs_dir, monkeypatch):
    from ttm_experiments.tracking.mlflow_tracker import MlflowTracker

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.01")
    tracker = MlflowTracker(
        f"sqlite:///{runs_dir}/mlflow.db", "sys", log_system_metrics=True, system_metrics_interval_s=3600
    )
    tracker.start_run("env", {})
    try:
        assert tracker._monitor.sampling_interval == 3600
    finally:
        tracker.end_run()


def test_system_metrics_are_off_by_default_and_the_interval_must_be_positive(runs_dir, smoke):
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.tracking.mlflow_tracker import MlflowTracker

    uri = f"sqlite:///{runs_dir}/mlflow.db"
    tracker = MlflowTracker(uri, "sys")
    run_id = tracker.start_run("off", {})
    tracker.end_run()
    assert _system_steps(uri, run_id) == []
    with pytest.raises(ConfigError, match="tracking.system_metrics_interval_s=0.0 must be"):
        to_config(smoke("tracking.system_metrics_interval_s=0"))


def test_multirun_ends_with_its_jobs_side_by_side_and_the_report_command(multirun):
    """The end-of-multirun table (report/sweep_end.py): each job's own overrides, its numbers as MLflow holds
    them, best first, and a ttm-report command that works as printed."""
    proc, client, runs = multirun
    out = proc.stdout
    table = out[out.index("MULTIRUN ") :]
    assert "2 jobs, best first by val/auroc" in table
    (shared,) = [line for line in table.splitlines() if line.startswith("all jobs: ")]
    assert {"debug=tiny", "optim.lr=0.001", "experiment_name=named"} <= set(shared.split()[2:]), shared
    assert "unfreeze.last_n" not in shared
    parents = {r.data.tags["sweep.job"]: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()[:1].isdigit()}
    for job, run in parents.items():
        assert f"unfreeze.last_n={run.data.params['unfreeze.last_n']}" in lines[job]
        assert f"{run.data.metrics['test/auroc']:.3f}" in lines[job]
    order = [line.split()[0] for line in table.splitlines() if line.strip()[:1].isdigit()]
    assert order == sorted(parents, key=lambda j: -parents[j].data.metrics["best/val_auroc"])
    command = table.strip().splitlines()[-1].split(": ", 1)[1]
    assert command.startswith("ttm-report report.experiment=named report.sweep=")
    sweep = command.split("report.sweep=")[1]
    assert all(r.data.tags["sweep"] == sweep for r in parents.values())
    runs_dir = Path(client.tracking_uri.removeprefix("sqlite:///")).parent
    done = subprocess.run(
        [sys.executable, "-m", "ttm_experiments.cli.report", *command.split()[1:], f"paths.runs_dir={runs_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_inner_fold_jobs_are_left_out_of_the_table_and_shared_overrides_shown_once():
    from types import SimpleNamespace

    from ttm_experiments.report.sweep_end import split_overrides, without_inner_folds

    outer = [SimpleNamespace(tags={"overrides": "a=1 b=2"}), SimpleNamespace(tags={"overrides": "a=1 b=3"})]
    inner = [SimpleNamespace(tags={"overrides": "a=1 b=2", "optuna.inner_fold": "0"})]
    assert without_inner_folds([outer[0], *inner, outer[1]]) == (outer, inner)
    assert split_overrides(outer) == (["a=1"], ["b=2", "b=3"])
    assert split_overrides([SimpleNamespace(tags={"overrides": "a=1"})] * 2) == (
        ["a=1"],
        ["(the shared ones only)"] * 2,
    )
