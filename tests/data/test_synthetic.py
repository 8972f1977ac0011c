"""Tests for the synthetic smartphone-PPG generator (small specs, so the whole file runs in seconds)."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
import pytest

from ttm_experiments.data.synthetic import (
    ARTIFACT_BITS,
    SyntheticSpec,
    artifact_names,
    cache_entry,
    generate,
    generate_cached,
)
from ttm_experiments.errors import ConfigError

SMALL = SyntheticSpec(n_subjects=8, windows_per_subject=10, seed=3)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


def test_shapes_dtypes_and_rate(small):
    n = SMALL.n_subjects * SMALL.windows_per_subject
    assert small.signals.shape == (n, 1, 1024)
    assert small.signals.dtype == np.float32
    assert small.labels.dtype == np.int64 and small.subjects.dtype == np.int64
    assert small.class_names == ("poor", "good")
    assert small.fs == pytest.approx(102.4)
    assert sorted(set(small.subjects.tolist())) == list(range(SMALL.n_subjects))
    for key in ("artifact", "severity", "hr_bpm", "true_label", "label_flipped"):
        assert len(small.meta[key]) == n


def test_no_nan_or_inf(small):
    assert np.isfinite(small.signals).all()


def test_same_seed_is_bit_identical(small):
    again = generate(SMALL)
    np.testing.assert_array_equal(again.signals, small.signals)
    np.testing.assert_array_equal(again.labels, small.labels)
    for key, value in small.meta.items():
        np.testing.assert_array_equal(again.meta[key], value)


def test_different_seed_differs(small):
    other = generate(dataclasses.replace(SMALL, seed=4))
    assert not np.array_equal(other.signals, small.signals)


def test_every_subject_has_both_classes(small):
    for subject in range(SMALL.n_subjects):
        assert set(small.labels[small.subjects == subject].tolist()) == {0, 1}


def test_meta_is_consistent(small):
    good, poor = small.meta["true_label"] == 1, small.meta["true_label"] == 0
    # Every truly poor window carries at least one artifact; good ones at most a mild one.
    assert (small.meta["artifact"][poor] > 0).all()
    assert (small.meta["severity"][good] < 0.2).all()
    flipped = small.meta["label_flipped"]
    np.testing.assert_array_equal(small.labels[~flipped], small.meta["true_label"][~flipped])
    np.testing.assert_array_equal(small.labels[flipped], 1 - small.meta["true_label"][flipped])
    assert ((45 <= small.meta["hr_bpm"]) & (small.meta["hr_bpm"] <= 130)).all()
    code = ARTIFACT_BITS["motion"] | ARTIFACT_BITS["clipping"]
    assert artifact_names(code) == ["motion", "clipping"]


def test_three_channels():
    spec = dataclasses.replace(SMALL, n_subjects=2, channels=3)
    windows = generate(spec)
    assert windows.signals.shape == (20, 3, 1024)
    # Same pulse seen by R, G, B: the channels differ but are strongly correlated in a good window.
    good = int(np.flatnonzero((windows.meta["true_label"] == 1) & (windows.meta["artifact"] == 0))[0])
    r, g, b = windows.signals[good].astype(np.float64)
    assert not np.allclose(r, g)
    assert np.corrcoef(r, g)[0, 1] > 0.8
    assert r.mean() > g.mean() > b.mean()  # red sits brightest, as with a phone's flash


@pytest.mark.parametrize(("length", "fs"), [(512, 51.2), (128, 12.8)])  # ttm_512 and ttm_tiny contexts
def test_other_window_lengths(length, fs):
    windows = generate(dataclasses.replace(SMALL, n_subjects=2, window_length=length))
    assert windows.signals.shape == (20, 1, length)
    assert windows.fs == pytest.approx(fs)
    assert np.isfinite(windows.signals).all()


def test_class_balance_on_moderate_spec():
    spec = SyntheticSpec(n_subjects=30, windows_per_subject=20, seed=1)
    windows = generate(spec)
    assert abs(windows.labels.mean() - spec.good_fraction) < 0.06
    assert 0.0 < windows.meta["label_flipped"].mean() < 0.08


def test_neurokit_emits_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(dataclasses.replace(SMALL, n_subjects=1))


def test_cache_hit_returns_identical_arrays(tmp_path, caplog):
    spec = dataclasses.replace(SMALL, n_subjects=2)
    with caplog.at_level(logging.INFO, logger="ttm_experiments.data.cache"):
        first = generate_cached(spec, cache_dir=tmp_path)
        second = generate_cached(spec, cache_dir=tmp_path)
    assert "synthetic: built" in caplog.text and "synthetic: 20 windows from the cache" in caplog.text
    key, _ = cache_entry(spec)
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [key]  # no temporary left
    np.testing.assert_array_equal(first.signals, second.signals)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.subjects, second.subjects)
    assert second.fs == first.fs and second.class_names == first.class_names
    assert second.meta.keys() == first.meta.keys()
    for key in first.meta:
        np.testing.assert_array_equal(first.meta[key], second.meta[key])


def test_corrupt_cache_entry_is_regenerated(tmp_path):
    spec = dataclasses.replace(SMALL, n_subjects=1)
    entry = tmp_path / "synthetic" / cache_entry(spec)[0]
    entry.mkdir(parents=True)
    (entry / "info.json").write_text("not json")
    windows = generate_cached(spec, cache_dir=tmp_path)
    np.testing.assert_array_equal(windows.signals, generate(spec).signals)


def test_cache_key_is_stable_and_spec_sensitive():
    def key(spec):
        return cache_entry(spec)[0]

    assert key(SMALL) == key(SyntheticSpec(n_subjects=8, windows_per_subject=10, seed=3))
    assert key(SMALL) == key(dataclasses.replace(SMALL, duration_s=10))  # int vs float
    assert key(SMALL) != key(dataclasses.replace(SMALL, seed=4))
    assert key(SMALL) != key(dataclasses.replace(SMALL, label_noise=0.05))
    assert len(key(SMALL)) == 16


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channels": 2}, "channels"),
        ({"good_fraction": 1.5}, "good_fraction"),
        ({"good_fraction": 0.0}, "good_fraction"),
        ({"window_length": 0}, "window_length"),
        ({"n_subjects": 0}, "n_subjects"),
        ({"label_noise": 0.5}, "label_noise"),
        ({"sim_fs": 250}, "sim_fs"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"seed": -1}, "seed"),
        ({"windows_per_subject": 2.5}, "windows_per_subject"),
    ],
)
def test_invalid_spec_raises_config_error(change, field, tmp_path):
    spec = dataclasses.replace(SMALL, **change)
    with pytest.raises(ConfigError, match=field):
        generate(spec)
    with pytest.raises(ConfigError, match=field):
        generate_cached(spec, cache_dir=tmp_path)


def test_rate_above_sim_fs_is_rejected():
    with pytest.raises(ConfigError, match="fs"):
        generate(dataclasses.replace(SMALL, window_length=4096, duration_s=2.0, sim_fs=1000))
