"""The run's MLflow model (pyfunc, registered) and `ttm-predict`: every input kind, every refusal, and
probabilities equal to the training code's own. One smoke model is smoke_run for the module."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.signal import resample_poly

from tests.helpers.configs import REPO, compose_config
from tests.helpers.smoke_run import SmokeRun, own_probabilities
from ttm_experiments.errors import CheckpointError, ConfigError, DataError


def predict(run: SmokeRun, *overrides: str, runs: Path | None = None) -> dict:
    """`ttm-predict` in-process, with the MLflow store of `run` (or the one below `runs`)."""
    from ttm_experiments.cli.predict import run as predict_run

    return predict_run(compose_config([f"paths.runs_dir={runs or run.runs}", *overrides], config_name="predict"))


# -- ttm-predict: inputs ------------------------------------------------------------------------------------------
def test_dataset_config_by_run_id_equals_training_probabilities_with_metrics(smoke_run, tmp_path):
    from ttm_experiments.data.prepare import load_windows

    out = tmp_path / "p.csv"
    r = predict(
        smoke_run,
        f"predict.model={smoke_run.parent.info.run_id}",
        f"predict.output={out}",
        "dataset=synthetic",
        "dataset.n_subjects=10",
        "dataset.windows_per_subject=12",
    )
    table = pd.read_csv(out)
    # then the amplitude check's outside_training_amplitude
    assert list(table.columns[:6]) == ["record_id", "start_s", "p_poor", "p_good", "predicted", "label"]
    c = smoke_run.config
    windows = load_windows(c.dataset, seed=c.seed, cache_dir=Path(c.paths.cache_dir))
    assert np.allclose(table[["p_poor", "p_good"]].to_numpy(), own_probabilities(smoke_run, windows.signals), atol=1e-6)
    assert r["summary"][0].startswith(f"{len(windows)} windows: poor ")
    assert "per-class accuracy: poor" in r["summary"][1] and "AUROC" in r["summary"][1]


def _wave(seconds: float, fs: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * fs)) / fs
    rng = np.random.default_rng(0)
    return np.stack([np.sin(2 * np.pi * 1.2 * t + k) + 0.1 * rng.standard_normal(len(t)) for k in range(channels)])


def test_npz_input_is_cut_and_resampled_as_training_does(smoke_run, tmp_path):
    x = _wave(25, 30.0)  # 750 samples at 30 Hz: two 10 s windows (300 samples each), 5 s left over
    np.savez(tmp_path / "rec.npz", signal=x[0], fs=30.0)
    out = tmp_path / "p.csv"
    r = predict(
        smoke_run,
        "predict.model=models:/ppg-quality-test/1",
        f"predict.output={out}",
        f"predict.input={tmp_path / 'rec.npz'}",
    )
    table = pd.read_csv(out)
    assert table["start_s"].tolist() == [0.0, 10.0] and set(table["record_id"]) == {"rec"}
    expected = np.stack([resample_poly(x[:, s : s + 300], 128, 300, axis=1, padtype="line") for s in (0, 300)])
    assert np.allclose(r["probs"], own_probabilities(smoke_run, expected.astype(np.float32)), atol=1e-6)


def test_csv_column_with_fs_and_hop(smoke_run, tmp_path):
    pd.DataFrame({"time": np.arange(600), "ppg": _wave(20, 30.0)[0]}).to_csv(tmp_path / "rec.csv", index=False)
    out = tmp_path / "p.csv"
    predict(
        smoke_run,
        f"predict.model={smoke_run.ckpt}",
        f"predict.output={out}",
        f"predict.input={tmp_path / 'rec.csv'}",
        "predict.column=ppg",
        "predict.fs=30",
        "predict.hop_s=5",
    )
    assert pd.read_csv(out)["start_s"].tolist() == [0.0, 5.0, 10.0]


def test_wfdb_record_with_its_rate_and_named_channel(smoke_run, tmp_path):
    import wfdb

    x = _wave(10, 30.0, channels=3).T
    wfdb.wrsamp(
        "100001_PPG",
        fs=30,
        units=["mV"] * 3,
        sig_name=["R", "G", "B"],
        p_signal=x,
        fmt=["16"] * 3,
        write_dir=str(tmp_path),
    )
    out = tmp_path / "p.csv"
    r = predict(
        smoke_run,
        f"predict.model={smoke_run.ckpt}",
        f"predict.output={out}",
        f"predict.input={tmp_path / '100001_PPG'}",
        "predict.channels=[R]",
    )
    assert pd.read_csv(out)["record_id"].tolist() == ["100001_PPG"]
    assert r["summary"][0].startswith("1 windows:")


# -- ttm-predict: refusals, nothing written -----------------------------------------------------------------------
def _refused(run: SmokeRun, tmp_path: Path, error: type, match: str, *overrides: str, runs: Path | None = None) -> None:
    out = tmp_path / "never.csv"
    with pytest.raises(error, match=match):
        predict(run, f"predict.output={out}", *overrides, runs=runs)
    assert not out.exists() and not list(tmp_path.glob(".never.csv*"))


@pytest.mark.parametrize(
    "overrides,kind",
    [
        (["schedule=linear_probe"], "a linear-probe run of ttm_tiny"),
        (["backbone=baseline_sqi"], "a baseline_sqi baseline run"),
    ],
)
def test_a_run_that_holds_no_classifier_says_what_it_is(smoke, smoke_run, runs_dir, tmp_path, overrides, kind):
    """Probe and baseline runs record metrics and write no best.pt: the error names the kind of run."""
    from tests.helpers.runs import runs_of
    from ttm_experiments.cli.train import train

    train(smoke(*overrides))
    _, (run,), _ = runs_of(runs_dir, "ttm-ppg-quality-smoke")
    assert not list(runs_dir.rglob("best.pt"))
    match = f"{run.info.run_id} is {kind}.*not a classifier ttm-predict can load"
    _refused(
        smoke_run,
        tmp_path,
        CheckpointError,
        match,
        f"predict.model={run.info.run_id}",
        "dataset=synthetic",
        runs=runs_dir,
    )


def test_model_that_does_not_exist(smoke_run, tmp_path):
    _refused(
        smoke_run,
        tmp_path,
        CheckpointError,
        "does not exist",
        f"predict.model={tmp_path / 'nope.pt'}",
        "dataset=synthetic",
    )
    _refused(smoke_run, tmp_path, CheckpointError, "no such run", f"predict.model={'0' * 32}", "dataset=synthetic")
    _refused(
        smoke_run,
        tmp_path,
        CheckpointError,
        "cannot be loaded",
        "predict.model=models:/ppg-quality-test/7",
        "dataset=synthetic",
    )


def test_mlflow_model_of_another_kind(smoke_run, tmp_path):
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    runs = tmp_path / "runs"  # a store of its own: the session's smoke run is only read
    runs.mkdir()
    mlflow.set_tracking_uri(f"sqlite:///{runs}/mlflow.db")
    mlflow.set_experiment("other-models")
    info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(), pip_requirements=[])
    _refused(
        smoke_run,
        tmp_path,
        CheckpointError,
        "another kind",
        f"predict.model=models:/{info.model_id}",
        "dataset=synthetic",
        runs=runs,
    )


def test_other_channel_count_short_input_and_missing_column(smoke_run, tmp_path):
    np.savez(tmp_path / "two.npz", signal=_wave(20, 30.0, channels=2), fs=30.0)
    _refused(
        smoke_run,
        tmp_path,
        DataError,
        "trained on 1 channel",
        f"predict.model={smoke_run.ckpt}",
        f"predict.input={tmp_path / 'two.npz'}",
    )
    np.savez(tmp_path / "short.npz", signal=_wave(4, 30.0)[0], fs=30.0)
    _refused(
        smoke_run,
        tmp_path,
        DataError,
        r"4 s long \(120 samples at 30 Hz\).*10 s \(300 samples",
        f"predict.model={smoke_run.ckpt}",
        f"predict.input={tmp_path / 'short.npz'}",
    )
    pd.DataFrame({"ppg": np.zeros(10)}).to_csv(tmp_path / "rec.csv", index=False)
    _refused(
        smoke_run,
        tmp_path,
        ConfigError,
        r"no column 'pleth'.*\['ppg'\]",
        f"predict.model={smoke_run.ckpt}",
        f"predict.input={tmp_path / 'rec.csv'}",
        "predict.column=pleth",
        "predict.fs=30",
    )


@pytest.mark.parametrize("fs, match", [(None, "no sampling rate"), (0.5, "outside"), (2e5, "outside")])
def test_sampling_rate_missing_or_absurd(smoke_run, tmp_path, fs, match):
    pd.DataFrame({"ppg": _wave(20, 30.0)[0]}).to_csv(tmp_path / "rec.csv", index=False)
    rate = [] if fs is None else [f"predict.fs={fs}"]
    _refused(
        smoke_run,
        tmp_path,
        ConfigError,
        match,
        f"predict.model={smoke_run.ckpt}",
        f"predict.input={tmp_path / 'rec.csv'}",
        "predict.column=ppg",
        *rate,
    )


def test_cli_prints_one_line_and_exits_2(smoke_run, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttm_experiments.cli.predict",
            f"paths.runs_dir={smoke_run.runs}",
            f"predict.model={tmp_path / 'nope.pt'}",
            f"predict.output={tmp_path / 'p.csv'}",
            "dataset=synthetic",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: predict.model" in done.stderr and "Traceback" not in done.stderr


# -- ttm-predict on device exports (layouts: tests/data/test_recordings.py) ---------------------------------------
EPOCH_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def _adc(seconds: float, fs: float) -> np.ndarray:
    """A wearable's raw ADC counts, around 1.5e6."""
    t = np.arange(int(seconds * fs)) / fs
    return np.round(1.5e6 + 2e4 * np.sin(2 * np.pi * 1.2 * t) + 3e3 * np.random.default_rng(0).standard_normal(len(t)))


def _watch_tsv(path: Path, x: np.ndarray, ms: np.ndarray) -> Path:
    rows = "\n".join(f"{m}\t{int(v)}\t72" for m, v in zip(ms, x))
    path.write_text(f"timestamp\tppg\thrm\n{rows}\n")
    return path


def _windows(x: np.ndarray, starts: list[int], span: int) -> np.ndarray:
    return np.stack([resample_poly(x[None, s : s + span], 128, span, axis=1, padtype="line") for s in starts])


def test_tab_separated_export_with_ms_clock_gives_the_rate_and_default_output(smoke_run, tmp_path):
    x = _adc(35, 100.0)
    path = _watch_tsv(tmp_path / "watch.tsv", x, EPOCH_MS + 10 * np.arange(len(x)))
    runs = tmp_path / "runs"
    r = predict(
        smoke_run,
        f"predict.model={smoke_run.ckpt}",
        f"predict.input={path}",
        "predict.column=ppg",
        "predict.time_column=timestamp",
        runs=runs,
    )
    assert r["output"].parent == runs / "predictions" and re.fullmatch(r"watch-\d{8}-\d{6}\.csv", r["output"].name)
    assert sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*")) == [
        "predictions",
        f"predictions/{r['output'].name}",
    ]
    table = pd.read_csv(r["output"])
    assert table["start_s"].tolist() == [0.0, 10.0, 20.0] and "segment" not in table.columns
    assert np.allclose(
        r["probs"], own_probabilities(smoke_run, _windows(x, [0, 1000, 2000], 1000).astype(np.float32)), atol=1e-6
    )
    assert r["notes"][0] == "input watch.tsv: tab-separated, header; 3500 rows; signal 'ppg' (column 1)"
    assert r["notes"][2] == "rate 100 Hz from the clock (median step 10 ms); regular: every step 10 ms"


def test_headerless_column_keeps_every_sample(smoke_run, tmp_path):
    x = _adc(21, 100.0) / 1e4
    path = tmp_path / "finger.txt"
    path.write_text("\n".join(f"{v:.4f}" for v in x) + "\n")
    out = tmp_path / "p.csv"
    r = predict(
        smoke_run, f"predict.model={smoke_run.ckpt}", f"predict.input={path}", "predict.fs=100", f"predict.output={out}"
    )
    expected = _windows(np.round(x, 4), [0, 1000], 1000).astype(np.float32)  # the first row is a sample
    assert np.allclose(r["probs"], own_probabilities(smoke_run, expected), atol=1e-6)
    assert (
        r["notes"][0]
        == "input finger.txt: one column, no header; 2100 rows; signal '0' (column 0); 100 Hz (predict.fs)"
    )


def test_a_gap_longer_than_a_window_adds_a_segment_column(smoke_run, tmp_path):
    x = _adc(45, 100.0)
    ms = EPOCH_MS + 10 * np.arange(len(x))
    ms[2200:] += 15_000  # 15 s without samples after 22 s
    path = _watch_tsv(tmp_path / "watch.tsv", x, ms)
    out = tmp_path / "p.csv"
    r = predict(
        smoke_run,
        f"predict.model={smoke_run.ckpt}",
        f"predict.input={path}",
        "predict.column=1",
        "predict.time_column=0",
        f"predict.output={out}",
    )
    table = pd.read_csv(out)
    assert list(table.columns[:3]) == ["record_id", "segment", "start_s"]
    assert table["segment"].tolist() == [0, 0, 1, 1] and table["start_s"].tolist() == pytest.approx([0, 10, 37, 47])
    expected = _windows(x, [0, 1000, 2200, 3200], 1000).astype(np.float32)
    assert np.allclose(r["probs"], own_probabilities(smoke_run, expected), atol=1e-6)
    assert any(n.startswith("gaps: 1 clock step(s) longer than a window (10 s): 15 s at 22.0 s") for n in r["notes"])


def test_model_not_given_is_one_line(smoke_run, tmp_path):
    _refused(smoke_run, tmp_path, ConfigError, r"predict.model is not set\. Fix: predict.model=", "dataset=synthetic")


@pytest.mark.slow  # two starts of the installed command (about 20 s on a busy 2-core machine)
def test_console_script_on_a_device_export_prints_what_it_read(smoke_run, tmp_path):
    """The installed `ttm-predict`, in a fresh folder: no run folder, the output printed, nothing else written."""
    x = _adc(25, 100.0)
    path = _watch_tsv(tmp_path / "watch.tsv", x, EPOCH_MS + 10 * np.arange(len(x)))
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("ttm-predict")),
            f"predict.model={smoke_run.ckpt}",
            f"predict.input={path}",
            "predict.column=ppg",
            "predict.time_column=timestamp",
            f"paths.runs_dir={tmp_path / 'runs'}",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "input watch.tsv: tab-separated, header; 2500 rows; signal 'ppg' (column 1)"
    assert lines[-1].startswith(f"predictions: {tmp_path / 'runs' / 'predictions'}/watch-")
    assert Path(lines[-1].split(": ", 1)[1]).is_file()
    assert list(work.iterdir()) == [] and [p.name for p in (tmp_path / "runs").iterdir()] == ["predictions"]
    assert "Traceback" not in done.stderr
    missing = subprocess.run(
        [str(Path(sys.executable).with_name("ttm-predict")), f"predict.input={path}"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        missing.returncode == 2 and "Traceback" not in missing.stderr and "MissingMandatoryValue" not in missing.stderr
    )
    assert missing.stderr.strip().splitlines() == [
        "error: predict.model is not set. Fix: predict.model=<a ttm-train run id | models:/<name>/<version> | "
        "runs/outputs/<date>/<time>/best.pt>"
    ]
