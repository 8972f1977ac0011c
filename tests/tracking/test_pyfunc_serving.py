"""The logged model outside this process: `make serve` (MLflow's scoring server, as the README shows it) answers a
real HTTP request with `ttm-predict`'s probabilities, and the model loads in a fresh virtual environment that has
only its own requirements.txt installed (not this package: the model carries its code)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.helpers.configs import REPO, compose_config
from tests.helpers.postgres import free_port

BIN = Path(sys.executable).parent


def _windows_and_predictions(smoke_run, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Six test windows as one recording at the model's rate, scored by ttm-predict: (windows, p_good)."""
    from ttm_experiments.cli.predict import run as predict_run

    windows = smoke_run.splits.test.signals[:6].astype(np.float32)
    fs = smoke_run.config.backbone.context_length / smoke_run.config.dataset.duration_s
    np.savez(tmp_path / "rec.npz", signal=np.concatenate(list(windows[:, 0].astype(np.float64))), fs=fs)
    out = tmp_path / "p.csv"
    cfg = compose_config(
        [
            f"paths.runs_dir={smoke_run.runs}",
            "predict.model=models:/ppg-quality-test/1",
            f"predict.input={tmp_path / 'rec.npz'}",
            f"predict.output={out}",
        ],
        config_name="predict",
    )
    predict_run(cfg)
    return windows, pd.read_csv(out)["p_good"].to_numpy()


def _post(url: str, payload: dict, timeout_s: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout_s
    body = json.dumps(payload).encode()
    while True:
        try:
            req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


@pytest.mark.slow
def test_make_serve_answers_with_ttm_predicts_probabilities(smoke_run, tmp_path):
    windows, expected = _windows_and_predictions(smoke_run, tmp_path)
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    env["PATH"] = "/usr/bin:/bin"  # the venv is not on PATH: the Makefile puts it there for uvicorn
    server = subprocess.Popen(
        ["make", "-s", "-o", ".venv/.installed", "serve", f"BIN={BIN}", "MODEL=models:/ppg-quality-test/1",
         f"PORT={port}", f"TRACKING_URI={smoke_run.uri}"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        answer = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": windows.tolist()})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    rows = answer["predictions"]
    assert [sorted(r) for r in rows[:1]] == [["outside_training_amplitude", "p_good", "p_poor"]]
    assert np.allclose([r["p_good"] for r in rows], expected, atol=1e-6)


@pytest.mark.slow
def test_model_loads_in_a_fresh_venv_with_only_its_requirements(smoke_run, tmp_path):
    mlflow.set_tracking_uri(smoke_run.uri)
    model_dir = Path(
        mlflow.artifacts.download_artifacts(smoke_run.parent.data.tags["model.uri"], dst_path=tmp_path / "m")
    )
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert not any(r.startswith("ttm-experiments") for r in requirements)  # the code travels with the model
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "-r", str(model_dir / "requirements.txt")],
        check=True,
        timeout=1800,
    )
    windows = smoke_run.splits.test.signals[:5].astype(np.float32)
    np.save(tmp_path / "w.npy", windows)
    script = (
        "import sys, json, numpy as np, mlflow\n"
        "assert 'ttm_experiments' not in sys.modules\n"
        "import importlib.util; assert importlib.util.find_spec('ttm_experiments') is None\n"
        f"m = mlflow.pyfunc.load_model({str(model_dir)!r})\n"
        f"out = m.predict(np.load({str(tmp_path / 'w.npy')!r}))\n"
        "print(json.dumps(out['p_good'].tolist()))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(py), "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from tests.helpers.smoke_run import own_probabilities

    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert np.allclose(got, own_probabilities(smoke_run, windows)[:, 1], atol=1e-6)
