"""Bad input gets a clear error that names the thing and the fix, before training, losing nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_TTM, backbone_conf
from mlflow.tracking import MlflowClient

from ttm_experiments.cli.train import train
from ttm_experiments.data import prepare
from ttm_experiments.data.base import WindowSet
from ttm_experiments.errors import CheckpointError, ConfigError, DataError, TrackingError, UnfreezeError
from ttm_experiments.models.backbones import build_classifier
from ttm_experiments.models.checkpoint import load_backbone_weights, save_classifier

TINY = backbone_conf(**TINY_TTM, dropout=0.1, head_hidden=8)


def windows(n=40, length=128, channels=1, seed=0) -> WindowSet:
    rng = np.random.default_rng(seed)
    return WindowSet(
        signals=rng.normal(size=(n, channels, length)).astype(np.float32),
        labels=np.arange(n) % 2,
        subjects=np.arange(n) // 4,
        class_names=("poor", "good"),
        fs=12.8,
    )


@pytest.mark.parametrize(
    "override,error,words",
    [
        ("unfreeze.last_n=9", UnfreezeError, ["last_n=9", "has 4 blocks"]),
        ("unfreeze.last_n=-1", ConfigError, ["unfreeze.last_n=-1", ">= 0"]),
        ("unfreeze.pattern=blocks\\.\\d+", UnfreezeError, ["matches no module", "Candidate modules"]),
        ("unfreeze.pattern='enc('", ConfigError, ["not a valid regex"]),
        ("optim.lr=0", ConfigError, ["optim.lr=0"]),
        ("optim.lr=nan", ConfigError, ["optim.lr=nan"]),
        ("dataset.window_length=100", ConfigError, ["dataset.window_length=100", "backbone.context_length=128"]),
        ("dataset.fold=7", DataError, ["dataset.fold=7", "0..4"]),
        ("dataset.n_folds=50", DataError, ["subjects cannot fill 50"]),
        ("backbone.pretrained_path=/nonexistent/foundation.pt", CheckpointError, ["does not exist"]),
        ("schedule.stages.0.epochs=0", ConfigError, ["epochs=0"]),
    ],
)
def test_bad_config_values(smoke, override, error, words):
    with pytest.raises(error) as err:
        train(smoke(override))
    for word in words:
        assert word in str(err.value)


def test_unreachable_tracking_server_fails_before_any_work(smoke, runs_dir):
    with pytest.raises(TrackingError) as err:
        train(smoke("tracking.uri=http://127.0.0.1:9"))
    assert "http://127.0.0.1:9" in str(err.value) and "Nothing was trained" in str(err.value)
    assert not (runs_dir / "cache").exists()  # no data was generated


def test_a_failed_run_keeps_earlier_runs_intact(smoke, runs_dir):
    train(smoke("experiment_name=keep"))
    with pytest.raises(UnfreezeError):
        train(smoke("experiment_name=keep", "unfreeze=depth"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("keep")
    finished = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    assert len(finished) == 4  # the earlier parent and its 3 stages; the failed config started no run
    assert all(r.info.status == "FINISHED" for r in client.search_runs([experiment.experiment_id]))


def test_window_length_mismatch_is_never_padded():
    with pytest.raises(DataError, match="never padded or cropped"):
        prepare.check_windows(windows(length=120), 128, 1, "error")


def test_nan_and_constant_windows_error_or_drop_with_count():
    ws = windows()
    ws.signals[3, 0, 10] = np.nan
    ws.signals[5] = 1.0
    with pytest.raises(DataError, match="1 window\\(s\\) with NaN/Inf and 1 constant"):
        prepare.check_windows(ws, 128, 1, "error")
    kept = prepare.check_windows(ws, 128, 1, "drop")
    assert len(kept) == len(ws) - 2 and np.isfinite(kept.signals).all()


def test_nan_windows_from_a_loader_stop_the_run_before_training(smoke, monkeypatch, runs_dir):
    def nan_loader(spec, seed, cache_dir):
        ws = windows(n=120, length=spec.window_length)
        ws.signals[0, 0, :] = np.nan
        return ws

    monkeypatch.setitem(prepare.LOADERS, "synthetic", nan_loader)
    with pytest.raises(DataError, match="NaN"):
        train(smoke())


def test_labels_outside_the_class_set():
    with pytest.raises(DataError, match=r"labels \[2\] are outside"):
        WindowSet(np.zeros((3, 1, 8), np.float32), np.array([0, 1, 2]), np.zeros(3, np.int64), ("poor", "good"), 1.0)


def test_split_with_one_class_is_refused():
    ws = windows()
    ws.labels[:] = 0
    ws.labels[:4] = 1  # one subject holds every "good" window
    with pytest.raises(DataError, match="has no window of class"):
        prepare.split_subject_wise(ws, 5, 0, seed=0)


def test_checkpoint_of_another_architecture_shows_both(tmp_path):
    model = build_classifier(TINY, num_channels=1, num_classes=2)
    save_classifier(tmp_path / "ckpt.pt", model, "full", ("poor", "good"))
    other = build_classifier(backbone_conf(**{**TINY_TTM, "d_model": 32}, head_hidden=8), num_channels=1, num_classes=2)
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(other.backbone, str(tmp_path / "ckpt.pt"))
    assert "d_model: model 32  checkpoint 16" in str(err.value)


def test_truncated_checkpoint(tmp_path):
    model = build_classifier(TINY, num_channels=1, num_classes=2)
    path = tmp_path / "ckpt.pt"
    save_classifier(path, model, "full", ("poor", "good"))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_backbone_weights(model.backbone, str(path))


def test_suite_checkpoint_round_trip_is_strict_and_exact(tmp_path):
    source = build_classifier(TINY, num_channels=1, num_classes=2)
    save_classifier(tmp_path / "ckpt.pt", source, "full", ("poor", "good"))
    target = build_classifier(TINY, num_channels=1, num_classes=2)
    assert load_backbone_weights(target.backbone, str(tmp_path / "ckpt.pt")) == "ssl"
    for (name, a), (_, b) in zip(source.backbone.state_dict().items(), target.backbone.state_dict().items()):
        assert torch.equal(a, b), name


def test_hugging_face_directory_loads_the_encoder_of_a_forecasting_checkpoint(tmp_path):
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    config = TinyTimeMixerConfig(
        context_length=128,
        patch_length=16,
        patch_stride=16,
        d_model=16,
        num_layers=2,
        adaptive_patching_levels=2,
        prediction_length=16,
        num_input_channels=1,
    )
    TinyTimeMixerForPrediction(config).save_pretrained(tmp_path / "ttm")
    target = build_classifier(TINY, num_channels=1, num_classes=2)
    assert load_backbone_weights(target.backbone, str(tmp_path / "ttm")) == "pretrained"
    reference = TinyTimeMixerForPrediction.from_pretrained(tmp_path / "ttm").backbone.state_dict()
    for name, tensor in target.backbone.model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    wrong = build_classifier(
        backbone_conf(**{**TINY_TTM, "context_length": 256}, head_hidden=8), num_channels=1, num_classes=2
    )
    with pytest.raises(CheckpointError, match="context_length: model 256  checkpoint 128"):
        load_backbone_weights(wrong.backbone, str(tmp_path / "ttm"))


def _cli(*args: str, runs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", *args, f"paths.runs_dir={runs}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def test_cli_user_error_is_one_message_and_exit_2(runs_dir):
    proc = _cli("ttm_experiments.cli.inspect_blocks", "unfreeze=depth", runs=runs_dir)
    assert proc.returncode == 2
    assert "error: stage 'partial' asks for the last 2 blocks" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_unknown_key_names_it(runs_dir):
    proc = _cli("ttm_experiments.cli.train", "optim.learning_rate=1e-3", runs=runs_dir)
    assert proc.returncode != 0
    assert "optim.learning_rate" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("runs", ["/sys/ttm-runs", "/sys"], ids=["cannot-create", "not-writable"])
def test_unwritable_runs_dir_fails_before_training(smoke, runs):
    with pytest.raises(TrackingError) as err:
        train(smoke(f"paths.runs_dir={runs}"))
    assert "paths.runs_dir=" in str(err.value) and "Nothing was trained" in str(err.value)


def test_full_disk_fails_cleanly_keeping_earlier_runs_and_files(smoke, runs_dir, monkeypatch):
    import errno

    from ttm_experiments.models import checkpoint

    train(smoke("experiment_name=disk"))

    def no_space(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(CheckpointError, match="No space left on device.*free disk space"):
        train(smoke("experiment_name=disk"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("disk").experiment_id])
    assert sorted(r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags) == ["FAILED", "FINISHED"]
    assert not list(runs_dir.rglob("*.tmp"))  # no half-written file left behind


def test_unknown_stage_kind_fails_at_compose_time(smoke):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="kind"):
        smoke("schedule.stages.0.kind=reinforce")


def test_checkpoint_missing_a_tensor_is_refused_naming_it(tmp_path):
    model = build_classifier(TINY, num_channels=1, num_classes=2)
    path = tmp_path / "ckpt.pt"
    save_classifier(path, model, "full", ("poor", "good"))
    ckpt = torch.load(path, weights_only=True)
    dropped = next(iter(ckpt["backbone"]))
    del ckpt["backbone"][dropped]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"does not fit the backbone.*{dropped}"):
        load_backbone_weights(build_classifier(TINY, num_channels=1, num_classes=2).backbone, str(path))
