"""Preparing the windows (ttm_experiments/data/prepare.py): the checks before training (length, NaN, labels) and the
subject-wise splits and their seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import train
from ttm_experiments.config.spec import to_config
from ttm_experiments.data import prepare
from ttm_experiments.data.base import WindowSet
from ttm_experiments.data.prepare import pretrain_dataset
from ttm_experiments.errors import DataError


def windows(n=40, length=128, channels=1, seed=0) -> WindowSet:
    rng = np.random.default_rng(seed)
    return WindowSet(
        signals=rng.normal(size=(n, channels, length)).astype(np.float32),
        labels=np.arange(n) % 2,
        subjects=np.arange(n) // 4,
        class_names=("poor", "good"),
        fs=12.8,
    )


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
    def nan_loader(spec, cache_dir):
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


# -- subject-wise splits ----------------------------------------------------------------------------------------
def test_seed_does_not_change_the_data_or_folds_but_split_seed_does(smoke, tmp_path):
    from ttm_experiments.training.recipe import load_splits

    def subjects(*overrides):
        splits = load_splits(to_config(smoke(*overrides, f"paths.cache_dir={tmp_path}/cache")))
        return [(p.subjects.tolist(), p.signals[:2].tolist()) for _, p in splits.items()]

    assert subjects("seed=0") == subjects("seed=1")
    assert subjects("dataset.split_seed=0") != subjects("dataset.split_seed=1")
    assert (
        pretrain_dataset(to_config(smoke("seed=5")).dataset)[1]
        == pretrain_dataset(to_config(smoke("seed=6")).dataset)[1]
    )


@pytest.mark.slow
def test_two_seeds_share_splits_json_and_differ_in_metrics(smoke, runs_dir):
    for seed in (0, 1):
        train(smoke(f"seed={seed}", "experiment_name=seeds", "schedule=full"))
    client, (a, b), _ = runs_of(runs_dir, "seeds")
    splits = [
        json.loads(Path(client.download_artifacts(r.info.run_id, "data/splits.json")).read_text()) for r in (a, b)
    ]
    assert splits[0] == splits[1]
    assert a.data.metrics["val/loss"] != b.data.metrics["val/loss"]


def test_a_predefined_split_sharing_subjects_is_refused_unless_allowed():
    from ttm_experiments.data.prepare import split_subject_wise

    ws = WindowSet(
        signals=np.zeros((6, 1, 8), np.float32),
        labels=np.array([0, 1] * 3),
        subjects=np.array([1, 1, 1, 2, 3, 3]),
        class_names=("poor", "good"),
        fs=1.0,
        meta={"split": np.array([0, 0, 1, 1, 2, 2])},
    )  # subject 1 in train and val
    with pytest.raises(DataError, match="1 subject.*dataset.allow_shared_subjects=true"):
        split_subject_wise(ws, 5, 0, 0)
    assert split_subject_wise(ws, 5, 0, 0, allow_shared=True).shared_subjects == 1
