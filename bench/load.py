"""Load on the stores: separate `ttm-train` processes started together, as a SLURM array does.

    python bench/load.py                      # all scenarios, 16 processes each (make load)
    python bench/load.py --procs 4 --scenarios fresh,server

Scenarios: `fresh` (N processes on a new SQLite store), `initialised` (N more on the same store), `optuna`
(4 sweeper workers, separate processes, on one study in a fresh optuna.db), `server` (N processes against a
real `mlflow server` on loopback). Each prints runs finished / started, wall time and the retries logged.
Jobs are tiny (`debug=tiny`, 1 batch per epoch): the figures measure the stores, not training.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
TINY = ["debug=tiny", "trainer.max_batches=1", "dataset.windows_per_subject=4"]


def train_cmd(*overrides: str, multirun: bool = False) -> list[str]:
    return [sys.executable, "-m", "ttm_experiments.cli.train", *(["-m"] if multirun else []), *TINY, *overrides]


def launch_together(cmds: list[list[str]], logs: Path) -> tuple[list[int], float, int]:
    """Start every command at once; exit statuses, wall time, and 'database is locked' retries seen in logs."""
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = [open(logs / f"{i}.log", "w") for i in range(len(cmds))]
    procs = [subprocess.Popen(c, cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT) for c, f in zip(cmds, files)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    for f in files:
        f.close()
    # SQLite's "database is locked" (tracking/mlflow_tracker.py retries it) and HTTP retries of the MLflow client
    text = [(logs / f"{i}.log").read_text().lower() for i in range(len(cmds))]
    retries = sum(t.count("locked") + t.count("retrying") for t in text)
    return codes, wall, retries


def mlflow_counts(uri: str, experiment: str) -> tuple[int, int]:
    """(FINISHED runs, all runs) of an experiment: parents and stages."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000) if exp else []
    return sum(r.info.status == "FINISHED" for r in runs), len(runs)


def report(name: str, codes: list[int], wall: float, retries: int, finished: int, total: int, expected: int) -> bool:
    ok = all(c == 0 for c in codes) and finished == total == expected
    print(
        f"{name:12s} processes ok {sum(c == 0 for c in codes)}/{len(codes)}  runs FINISHED {finished}/{total} "
        f"(expected {expected})  wall {wall:6.1f} s  lock retries logged {retries}  {'OK' if ok else 'LOST'}",
        flush=True,
    )
    return ok


def sqlite_scenario(root: Path, name: str, procs: int) -> bool:
    runs = root / "sqlite"
    cmds = [
        train_cmd(
            f"seed={i}",
            f"paths.runs_dir={runs}",
            f"hydra.run.dir={root / name / str(i)}",
            f"experiment_name=load-{name}",
        )
        for i in range(procs)
    ]
    codes, wall, retries = launch_together(cmds, root / "logs" / name)
    return report(name, codes, wall, retries, *mlflow_counts(f"sqlite:///{runs}/mlflow.db", f"load-{name}"), procs * 4)


def optuna_scenario(root: Path, workers: int = 4, trials: int = 2) -> bool:
    """`workers` sweeper processes, each asking for `trials` trials of one study in one SQLite storage."""
    import optuna
    from mlflow.tracking import MlflowClient

    runs = root / "optuna"
    cmds = [
        train_cmd(
            "hparams_search=unfreeze_lr",
            f"hydra.sweeper.n_trials={trials}",
            f"paths.runs_dir={runs}",
            "hydra.sweeper.study_name=load",
            f"hydra.sweep.dir={root / 'sweep' / str(w)}",
            "experiment_name=load-optuna",
            multirun=True,
        )
        for w in range(workers)
    ]
    codes, wall, retries = launch_together(cmds, root / "logs" / "optuna")
    study = optuna.load_study(study_name="load", storage=f"sqlite:///{runs}/optuna.db")
    states = [t.state.name for t in study.trials]
    print(
        f"{'optuna':12s} trials {len(states)} ({', '.join(f'{states.count(s)} {s}' for s in sorted(set(states)))}), "
        f"{workers * trials} requested",
        flush=True,
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    exp = client.get_experiment_by_name("load-optuna")
    all_runs = client.search_runs([exp.experiment_id], max_results=5000) if exp else []
    # workers starting together may each open a study run or find another's: their number is not fixed
    study_runs = [r for r in all_runs if r.data.tags.get("ttm.kind") == "study"]
    train = [r for r in all_runs if r.data.tags.get("ttm.kind") != "study"]
    print(
        f"{'optuna':12s} MLflow study runs {len(study_runs)} ({', '.join(sorted(r.info.status for r in study_runs))})",
        flush=True,
    )
    finished = sum(r.info.status == "FINISHED" for r in train)
    # per trial a parent and 3 stage runs
    ok = report("optuna", codes, wall, retries, finished, len(train), workers * trials * 4)
    done = states.count("COMPLETE") + states.count("PRUNED")
    return ok and len(states) == done == workers * trials and all(r.info.status == "FINISHED" for r in study_runs)


def server_scenario(root: Path, procs: int) -> bool:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = root / "server"
    store.mkdir(parents=True)
    # as tests/helpers/mlflow_server.py starts it: its own process group (uvicorn workers go with it), no job runner
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{store}/mlflow.db",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--workers",
            "2",
        ],
        cwd=store,
        env={**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=open(store / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        _wait_http(uri, server)
        cmds = [
            train_cmd(
                f"seed={i}",
                f"paths.runs_dir={root / 'client'}",
                f"tracking.uri={uri}",
                f"hydra.run.dir={root / 'server-out' / str(i)}",
                "experiment_name=load-server",
            )
            for i in range(procs)
        ]
        codes, wall, retries = launch_together(cmds, root / "logs" / "server")
        return report("server", codes, wall, retries, *mlflow_counts(uri, "load-server"), procs * 4)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def _wait_http(uri: str, server: subprocess.Popen, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}")
        try:
            urllib.request.urlopen(uri + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {uri} did not answer within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=16)
    parser.add_argument("--scenarios", default="fresh,initialised,optuna,server")
    parser.add_argument("--keep", help="write below this directory instead of a temporary one")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="ttm-load-"))
    print(
        f"load: {args.procs} processes per scenario, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, below {root}",
        flush=True,
    )
    results = []
    for name in args.scenarios.split(","):
        if name in ("fresh", "initialised"):
            results.append(sqlite_scenario(root, name, args.procs))
        elif name == "optuna":
            results.append(optuna_scenario(root))
        elif name == "server":
            results.append(server_scenario(root, args.procs))
        else:
            parser.error(f"unknown scenario {name!r}")
    print(f"scenarios without loss: {sum(results)}/{len(results)}", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
