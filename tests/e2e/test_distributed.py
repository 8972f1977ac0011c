"""The many-machine set-up, for real: an Optuna study on a PostgreSQL server filled by two sweepers at once, and an
`mlflow server` whose backend store is PostgreSQL, receiving a joblib grid.

The PostgreSQL server is started from the Debian binaries (tests/helpers/postgres.py) into a temporary directory on a
free loopback port, once per session, and stopped at the end. Without those binaries the tests FAIL, saying how to
install them: a skip would let CI go green without testing anything.
"""

from __future__ import annotations

import socket

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import postgres
from tests.helpers.runs import children, cli, finish, start, train_runs

pytestmark = pytest.mark.slow
CONTRACT = ("val/auroc", "val/acc/poor", "val/acc/good", "test/auroc")  # what every ttm-train run reports


@pytest.fixture(scope="session")
def pg():
    try:
        import psycopg  # noqa: F401  (SQLAlchemy 2.1 opens postgresql:// URLs with psycopg 3)
    except ImportError:
        pytest.fail(
            "the PostgreSQL driver is missing: pip install 'ttm-experiments[postgres]' "
            "(or pip install 'psycopg[binary]')",
            pytrace=False,
        )
    try:
        server = postgres.PostgresServer()
    except postgres.PostgresNotFound as err:
        pytest.fail(str(err), pytrace=False)
    with server:
        yield server


@pytest.fixture(scope="session")
def pg_mlflow_server(pg, mlflow_server) -> str:
    """`mlflow server` with its backend store in PostgreSQL and artifacts proxied into a temporary directory."""
    return mlflow_server(pg.create_database("mlflow"), workers=2)


def test_two_sweepers_fill_one_postgresql_study_without_losing_a_trial(pg, pg_mlflow_server, tmp_path, monkeypatch):
    import optuna

    n = 3
    storage = pg.create_database("optuna")
    # the workers get the password the way the README recommends, from libpq's PGPASSWORD: a password in the
    # URL would be in every job's override line and .hydra/overrides.yaml
    monkeypatch.setenv("PGPASSWORD", postgres.PASSWORD)
    study_name = "pg-shared"
    args = [
        "hparams_search=unfreeze_lr",
        f"hydra.sweeper.storage={pg.url('optuna', password=False)}",
        f"hydra.sweeper.study_name={study_name}",
        f"hydra.sweeper.n_trials={n}",
        "hydra.sweeper.pruner.n_warmup_steps=2",  # smoke trains 3 epochs
        "unfreeze.last_n=choice(0, 1)",  # the command line narrows the file's space
        f"tracking.uri={pg_mlflow_server}",
        "experiment_name=pg-study",
    ]
    cache = tmp_path / "cache"
    # two workers with nothing in common but the two URLs, as on two machines; both start on an empty database
    workers = [
        start(cli(tmp_path / f"runs-{w}", *args, f"hydra.sweep.dir={tmp_path}/sweep-{w}", cache=cache))
        for w in ("a", "b")
    ]
    done = [finish(proc, timeout=900) for proc in workers]

    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    states = sorted(t.state.name for t in trials)
    assert len(trials) == 2 * n, states
    assert sorted(t.number for t in trials) == list(range(2 * n))
    assert set(states) <= {"COMPLETE", "PRUNED"}, [(t.number, t.state.name, t.user_attrs) for t in trials]
    for proc in done:
        assert f"this run: {n} trials" in proc.stdout, proc.stdout[-2000:]
        assert postgres.PASSWORD not in proc.stdout + proc.stderr
    # every trial has its MLflow run on the server, each once
    client = MlflowClient(tracking_uri=pg_mlflow_server)
    by_trial = {}
    for run in train_runs(client, "pg-study"):
        assert run.data.tags["optuna.trial"] not in by_trial, "two runs for one trial"
        by_trial[run.data.tags["optuna.trial"]] = run
    assert sorted(map(int, by_trial)) == list(range(2 * n))
    for t in trials:
        run = by_trial[str(t.number)]
        assert run.info.run_id == t.user_attrs["mlflow.run_id"]
        assert run.info.status == ("FINISHED" if t.state.name == "COMPLETE" else "KILLED")
    assert not any((tmp_path / f"runs-{w}" / "optuna.db").exists() for w in ("a", "b"))


def test_joblib_grid_against_an_mlflow_server_on_postgresql(pg, pg_mlflow_server, tmp_path):
    runs = tmp_path / "runs"
    proc = start(
        cli(
            runs,
            "unfreeze.last_n=0,1",
            "optim.lr=1e-4,1e-3",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"tracking.uri={pg_mlflow_server}",
            "experiment_name=pg-grid",
            f"hydra.sweep.dir={tmp_path}/sweep",
            cache=tmp_path / "cache",
        )
    )
    finish(proc, timeout=900)

    client = MlflowClient(tracking_uri=pg_mlflow_server)
    parents = train_runs(client, "pg-grid")
    assert sorted((r.data.params["unfreeze.last_n"], float(r.data.params["optim.lr"])) for r in parents) == [
        ("0", 1e-4),
        ("0", 1e-3),
        ("1", 1e-4),
        ("1", 1e-3),
    ]
    for run in parents:
        assert run.info.status == "FINISHED"
        missing = [k for k in CONTRACT if k not in run.data.metrics]
        assert not missing, f"run {run.info.run_id} lacks {missing}"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/auroc")] == [1, 2, 3]
        stages = {r.data.tags["stage"]: r.info.status for r in children(client, run)}
        assert stages == {"head": "FINISHED", "partial": "FINISHED", "full": "FINISHED"}
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    # the runs are rows in PostgreSQL, not in a file next to the jobs
    count = pg.psql(
        "SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id WHERE e.name = 'pg-grid'",
        database="mlflow",
    )
    assert count == "16"  # 4 jobs x (1 parent + 3 stages)
    assert not (runs / "mlflow.db").exists()


def test_unreachable_postgresql_storage_stops_the_cli_before_any_trial(tmp_path):
    """The real command line; no server needed: nothing listens on the port."""
    runs = tmp_path / "runs"
    with socket.socket() as s:  # bound for the whole run, never listening: the port is refused and stays ours
        s.bind(("127.0.0.1", 0))
        url = f"postgresql://ttm:s3cret@127.0.0.1:{s.getsockname()[1]}/optuna"
        proc = finish(
            start(
                cli(
                    runs,
                    "hparams_search=unfreeze_lr",
                    f"hydra.sweeper.storage={url}",
                    f"hydra.sweep.dir={tmp_path}/sweep",
                )
            ),
            check=False,
            timeout=300,
        )
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    shown = url.replace("s3cret", "***")
    assert shown in errors[0] and "cannot be opened" in errors[0], errors[0]
    assert "start the database server or fix hydra.sweeper.storage" in errors[0], errors[0]
    assert "s3cret" not in proc.stdout + proc.stderr
    assert not (tmp_path / "sweep").exists()  # no job started
    assert not (runs / "optuna.db").exists() and not list(runs.glob("outputs/**/*.pt"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    if (runs / "mlflow.db").exists():  # PrepareTracking may have created the (empty) store first
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
