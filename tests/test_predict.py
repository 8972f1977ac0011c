"""The run's MLflow model (pyfunc, registered) and `ttm-predict`: every input kind, every refusal, and
probabilities equal to the training code's own. One smoke model is trained for the module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, compose_config
from scipy.signal import resample_poly

from ttm_experiments.errors import CheckpointError, ConfigError, DataError

SMOKE = ["debug=smoke", "tracking.register_model=ppg-quality-test"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A smoke run (registered as ppg-quality-test), its run, config and test split."""
    from ttm_experiments.cli.train import train
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training.recipe import load_splits

    runs = tmp_path_factory.mktemp("predict") / "runs"
    cfg = compose_config([*SMOKE, f"paths.runs_dir={runs}"])
    train(cfg)
    uri = f"sqlite:///{runs}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run = client.search_runs(
        [client.get_experiment_by_name(cfg.experiment_name).experiment_id], "tags.schedule LIKE '%'"
    )[0]
    ckpt = next(runs.glob("outputs/**/best.pt"))
    return {
        "runs": runs,
        "uri": uri,
        "run": run,
        "ckpt": ckpt,
        "splits": load_splits(to_config(cfg)),
        "config": to_config(cfg),
    }


def own_probabilities(t: dict, signals: np.ndarray) -> np.ndarray:
    """The classifier as training builds it (build_classifier + the checkpoint's weights), in evaluation mode."""
    from ttm_experiments.metrics.classification import softmax
    from ttm_experiments.models.backbones import build_classifier

    c = t["config"]
    model = build_classifier(c.backbone, num_channels=c.dataset.channels, num_classes=2)
    state = torch.load(t["ckpt"], weights_only=True)
    model.backbone.model.load_state_dict(state["backbone"])
    model.head.load_state_dict(state["head"])
    model.eval()
    with torch.inference_mode():
        return softmax(model(torch.from_numpy(np.ascontiguousarray(signals))).numpy())


def predict(t: dict, *overrides: str) -> dict:
    from ttm_experiments.cli.predict import run

    return run(compose_config([f"paths.runs_dir={t['runs']}", *overrides], config_name="predict"))


# -- the MLflow model -------------------------------------------------------------------------------------------
def test_logged_model_returns_the_runs_own_test_probabilities(trained):
    from ttm_experiments.metrics.classification import classification_metrics

    mlflow.set_tracking_uri(trained["uri"])
    run = trained["run"]
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    test = trained["splits"].test
    out = model.predict(test.signals)
    assert list(out.columns) == ["p_poor", "p_good"]
    assert np.allclose(out.to_numpy(), own_probabilities(trained, test.signals), atol=1e-6)
    m = classification_metrics(test.labels, out.to_numpy(), test.class_names)
    assert m["auroc"] == pytest.approx(run.data.metrics["test/auroc"], abs=1e-9)
    schema = model.metadata.get_input_schema().inputs[0]
    assert schema.shape == (-1, 1, 128) and schema.type == np.dtype("float32")
    by_id = mlflow.pyfunc.load_model(run.data.tags["model.uri"])  # the LoggedModel, models:/<model_id>
    assert np.allclose(by_id.predict(test.signals[:3]).to_numpy(), out.to_numpy()[:3])


def test_registered_model_loads_by_name_and_version_and_the_run_records_it(trained):
    mlflow.set_tracking_uri(trained["uri"])
    tags = trained["run"].data.tags
    assert tags["registered_model"] == "models:/ppg-quality-test/1" and tags["registered_model.version"] == "1"
    x = trained["splits"].test.signals[:4]
    got = mlflow.pyfunc.load_model("models:/ppg-quality-test/1").predict(x).to_numpy()
    assert np.allclose(got, own_probabilities(trained, x), atol=1e-6)


def test_logged_model_refuses_windows_that_training_would_refuse(trained):
    mlflow.set_tracking_uri(trained["uri"])
    model = mlflow.pyfunc.load_model(f"runs:/{trained['run'].info.run_id}/model").unwrap_python_model()
    bad = trained["splits"].test.signals[:2].copy()
    bad[0, 0, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        model.predict(None, bad)
    with pytest.raises(DataError, match=r"\[N, 1, 128\]"):
        model.predict(None, np.zeros((2, 1, 100), np.float32))


# -- ttm-predict: inputs ------------------------------------------------------------------------------------------
def test_dataset_config_by_run_id_equals_training_probabilities_with_metrics(trained, tmp_path):
    from ttm_experiments.data.prepare import load_windows

    out = tmp_path / "p.csv"
    r = predict(
        trained,
        f"predict.model={trained['run'].info.run_id}",
        f"predict.output={out}",
        "dataset=synthetic",
        "dataset.n_subjects=10",
        "dataset.windows_per_subject=12",
    )
    table = pd.read_csv(out)
    assert list(table.columns) == ["record_id", "start_s", "p_poor", "p_good", "predicted", "label"]
    c = trained["config"]
    windows = load_windows(c.dataset, seed=c.seed, cache_dir=Path(c.paths.cache_dir))
    assert np.allclose(table[["p_poor", "p_good"]].to_numpy(), own_probabilities(trained, windows.signals), atol=1e-6)
    assert r["summary"][0].startswith(f"{len(windows)} windows: poor ")
    assert "per-class accuracy: poor" in r["summary"][1] and "AUROC" in r["summary"][1]


def _wave(seconds: float, fs: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * fs)) / fs
    rng = np.random.default_rng(0)
    return np.stack([np.sin(2 * np.pi * 1.2 * t + k) + 0.1 * rng.standard_normal(len(t)) for k in range(channels)])


def test_npz_input_is_cut_and_resampled_as_training_does(trained, tmp_path):
    x = _wave(25, 30.0)  # 750 samples at 30 Hz: two 10 s windows (300 samples each), 5 s left over
    np.savez(tmp_path / "rec.npz", signal=x[0], fs=30.0)
    out = tmp_path / "p.csv"
    r = predict(
        trained,
        "predict.model=models:/ppg-quality-test/1",
        f"predict.output={out}",
        f"predict.input={tmp_path / 'rec.npz'}",
    )
    table = pd.read_csv(out)
    assert table["start_s"].tolist() == [0.0, 10.0] and set(table["record_id"]) == {"rec"}
    expected = np.stack([resample_poly(x[:, s : s + 300], 128, 300, axis=1, padtype="line") for s in (0, 300)])
    assert np.allclose(r["probs"], own_probabilities(trained, expected.astype(np.float32)), atol=1e-6)


def test_csv_column_with_fs_and_hop(trained, tmp_path):
    pd.DataFrame({"time": np.arange(600), "ppg": _wave(20, 30.0)[0]}).to_csv(tmp_path / "rec.csv", index=False)
    out = tmp_path / "p.csv"
    predict(
        trained,
        f"predict.model={trained['ckpt']}",
        f"predict.output={out}",
        f"predict.input={tmp_path / 'rec.csv'}",
        "predict.column=ppg",
        "predict.fs=30",
        "predict.hop_s=5",
    )
    assert pd.read_csv(out)["start_s"].tolist() == [0.0, 5.0, 10.0]


def test_wfdb_record_with_its_rate_and_named_channel(trained, tmp_path):
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
        trained,
        f"predict.model={trained['ckpt']}",
        f"predict.output={out}",
        f"predict.input={tmp_path / '100001_PPG'}",
        "predict.channels=[R]",
    )
    assert pd.read_csv(out)["record_id"].tolist() == ["100001_PPG"]
    assert r["summary"][0].startswith("1 windows:")


# -- ttm-predict: refusals, nothing written -----------------------------------------------------------------------
def _refused(t: dict, tmp_path: Path, error: type, match: str, *overrides: str) -> None:
    out = tmp_path / "never.csv"
    with pytest.raises(error, match=match):
        predict(t, f"predict.output={out}", *overrides)
    assert not out.exists() and not list(tmp_path.glob(".never.csv*"))


def test_model_that_does_not_exist(trained, tmp_path):
    _refused(
        trained,
        tmp_path,
        CheckpointError,
        "does not exist",
        f"predict.model={tmp_path / 'nope.pt'}",
        "dataset=synthetic",
    )
    _refused(trained, tmp_path, CheckpointError, "no such run", f"predict.model={'0' * 32}", "dataset=synthetic")
    _refused(
        trained,
        tmp_path,
        CheckpointError,
        "cannot be loaded",
        "predict.model=models:/ppg-quality-test/7",
        "dataset=synthetic",
    )


def test_mlflow_model_of_another_kind(trained, tmp_path):
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.set_tracking_uri(trained["uri"])
    mlflow.set_experiment("other-models")
    info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(), pip_requirements=[])
    _refused(
        trained,
        tmp_path,
        CheckpointError,
        "another kind",
        f"predict.model=models:/{info.model_id}",
        "dataset=synthetic",
    )


def test_other_channel_count_short_input_and_missing_column(trained, tmp_path):
    np.savez(tmp_path / "two.npz", signal=_wave(20, 30.0, channels=2), fs=30.0)
    _refused(
        trained,
        tmp_path,
        DataError,
        "trained on 1 channel",
        f"predict.model={trained['ckpt']}",
        f"predict.input={tmp_path / 'two.npz'}",
    )
    np.savez(tmp_path / "short.npz", signal=_wave(4, 30.0)[0], fs=30.0)
    _refused(
        trained,
        tmp_path,
        DataError,
        r"4 s long \(120 samples at 30 Hz\).*10 s \(300 samples",
        f"predict.model={trained['ckpt']}",
        f"predict.input={tmp_path / 'short.npz'}",
    )
    pd.DataFrame({"ppg": np.zeros(10)}).to_csv(tmp_path / "rec.csv", index=False)
    _refused(
        trained,
        tmp_path,
        ConfigError,
        r"no column 'pleth'.*\['ppg'\]",
        f"predict.model={trained['ckpt']}",
        f"predict.input={tmp_path / 'rec.csv'}",
        "predict.column=pleth",
        "predict.fs=30",
    )


@pytest.mark.parametrize("fs, match", [(None, "no sampling rate"), (0.5, "outside"), (2e5, "outside")])
def test_sampling_rate_missing_or_absurd(trained, tmp_path, fs, match):
    pd.DataFrame({"ppg": _wave(20, 30.0)[0]}).to_csv(tmp_path / "rec.csv", index=False)
    rate = [] if fs is None else [f"predict.fs={fs}"]
    _refused(
        trained,
        tmp_path,
        ConfigError,
        match,
        f"predict.model={trained['ckpt']}",
        f"predict.input={tmp_path / 'rec.csv'}",
        "predict.column=ppg",
        *rate,
    )


def test_cli_prints_one_line_and_exits_2(trained, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttm_experiments.cli.predict",
            f"paths.runs_dir={trained['runs']}",
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


# -- the configs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["butppg", "windows", "vitaldb", "synthetic"])
def test_predict_config_composes_with_each_dataset_and_refuses_unknown_keys(dataset):
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError

    from ttm_experiments.config.schema import PredictConf, PredictConfig

    cfg = compose_config(
        [
            "predict.model=m",
            "predict.output=o.csv",
            f"dataset={dataset}",
            "predict.channels=[R]",
            "predict.fs=30",
            "predict.hop_s=2.5",
        ],
        config_name="predict",
    )
    conf = OmegaConf.to_object(cfg.predict)
    assert isinstance(conf, PredictConf) and conf.channels == ["R"] and conf.fs == 30.0 and conf.hop_s == 2.5
    assert cfg.dataset.name == dataset and compose_config(config_name="predict").dataset is None
    assert OmegaConf.get_type(compose_config(config_name="predict")) is PredictConfig
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="predict.colum"):
        compose_config(["predict.colum=ppg"], config_name="predict")


def test_register_model_is_a_typed_tracking_key():
    from ttm_experiments.config.spec import to_config

    assert to_config(compose_config()).tracking.register_model is None
    assert to_config(compose_config(["tracking.register_model=ppg-quality"])).tracking.register_model == "ppg-quality"
