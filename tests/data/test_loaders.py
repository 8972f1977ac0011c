"""The real-data loaders (butppg, vitaldb, windows) on small fixtures in the exact on-disk layouts, the cache,
the errors (windows without a subject among them), and debug=tiny training runs on the BUT-PPG fixture (binary
quality and 8-class motion)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy.signal import resample_poly

from tests.helpers.data_fixtures import BUT_FS, write_butppg, write_vital, write_windows
from ttm_experiments.cli.train import train
from ttm_experiments.config.schema import DatasetConf
from ttm_experiments.data import butppg, vitaldb, windows
from ttm_experiments.data.prepare import check_windows, loader_settings, split_subject_wise
from ttm_experiments.errors import ConfigError, DataError

TRANSPOSED = ("100001", "100002")  # release-1 records: header transposed, rdrecord returns (1, 300)
INTERLEAVED = ("101003",)


def spec(name: str, root, **kw):
    """The loader `name`'s own settings, built as training builds them from a dataset config."""
    settings = {"window_length": 128, "duration_s": 10.0, **kw}
    return loader_settings(DatasetConf(name=name, loader=name, root=None if root is None else str(root), **settings))


@pytest.fixture(scope="module")
def but_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("butppg") / "butppg-2.0.0"
    truth = write_butppg(root, transposed=TRANSPOSED, interleaved=INTERLEAVED)
    return root, truth


# --------------------------------------------------------------------------------------------------------
# BUT-PPG
# --------------------------------------------------------------------------------------------------------


def test_butppg_shapes_labels_subjects_and_site(but_root, tmp_path):
    root, truth = but_root
    result = butppg.load_butppg(spec("butppg", root), cache_dir=tmp_path)
    ws = result.windows
    assert ws.signals.shape == (120, 1, 128) and ws.signals.dtype == np.float32
    assert ws.class_names == ("poor", "good") and ws.fs == pytest.approx(12.8)
    ids = [f"{r:06d}" for r in ws.meta["record_id"]]
    assert sorted(ids) == sorted(truth)
    assert ws.labels.tolist() == [truth[r]["quality"] for r in ids]
    assert ws.subjects.tolist() == [int(r[:3]) for r in ids] and len(np.unique(ws.subjects)) == 15
    site = {"finger": butppg.SITE_FINGER, "ear": butppg.SITE_EAR}
    assert ws.meta["site"].tolist() == [site[truth[r]["site"]] for r in ids]
    assert ws.meta["motion"].tolist() == [truth[r]["motion"] for r in ids]
    assert np.isfinite(ws.meta["hr"]).all()
    counts = result.report["counts"]
    assert counts["transposed_repaired"] == 2 and counts["interleaved_repaired"] == 1
    assert counts["single_channel_used"] == 2 and result.report["excluded"] == {}
    assert set(result.report["sites"]) == {"finger", "ear"}
    check_windows(ws, 128, 1, "error")  # finite, not constant


def test_release1_transposed_header_is_detected_and_repaired(tmp_path):
    import wfdb

    plain, broken = tmp_path / "plain", tmp_path / "broken"
    write_butppg(plain, n_subjects=1, records_per_subject=3)
    write_butppg(broken, n_subjects=1, records_per_subject=3, transposed=("100001",), interleaved=("100002",))
    # the fixture is what such a header really gives: one sample of 300 signals, and one signal of 900 samples
    assert wfdb.rdrecord(str(broken / "100001" / "100001_PPG")).p_signal.shape == (1, 300)
    assert wfdb.rdrecord(str(broken / "100002" / "100002_PPG")).p_signal.shape == (900, 1)
    a = butppg.load_butppg(spec("butppg", plain), cache_dir=tmp_path / "c1")
    b = butppg.load_butppg(spec("butppg", broken), cache_dir=tmp_path / "c2")
    np.testing.assert_allclose(b.windows.signals, a.windows.signals, rtol=1e-3, atol=1e-2)
    assert b.windows.meta["repaired"].tolist() == [True, True, False]
    # all three channels: the one-channel release-1 record cannot supply G and B, and is counted, not lost
    rgb = butppg.load_butppg(
        spec("butppg", broken, ppg_channels=("R", "G", "B"), channels=3), cache_dir=tmp_path / "c3"
    )
    assert rgb.windows.signals.shape == (2, 3, 128)
    assert rgb.report["excluded"] == {"lacks the asked channels": 1}
    np.testing.assert_allclose(rgb.windows.signals[0, 0], a.windows.signals[1, 0], rtol=1e-3, atol=1e-2)


def test_ppg_channels_must_agree_with_channels(but_root, tmp_path):
    root, _ = but_root
    with pytest.raises(ConfigError, match=r"selects 3 channel\(s\) but dataset.channels=1.*dataset.channels=3"):
        butppg.load_butppg(spec("butppg", root, ppg_channels=("R", "G", "B")), cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="ppg_channels"):
        butppg.load_butppg(spec("butppg", root, ppg_channels=("X",)), cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="not a BUT-PPG task"):
        butppg.load_butppg(spec("butppg", root, task="hr"), cache_dir=tmp_path)


def test_resampling_30_hz_to_the_context_length(tmp_path):
    import wfdb

    root = tmp_path / "data"
    write_butppg(root, n_subjects=1, records_per_subject=2)
    ws = butppg.load_butppg(spec("butppg", root, window_length=1024), cache_dir=tmp_path / "cache").windows
    assert ws.signals.shape == (2, 1, 1024) and ws.fs == pytest.approx(102.4)
    raw = wfdb.rdrecord(str(root / "100001" / "100001_PPG")).p_signal[:, 0]
    assert np.allclose(ws.signals[0, 0], resample_poly(raw, 256, 75, padtype="line"), atol=1e-3)
    # the same curve at the new rate: interpolating the raw record at the new sample times agrees closely
    t_new, t_raw = np.arange(1024) / 102.4, np.arange(300) / BUT_FS
    inner = (t_new > 0.3) & (t_new < 9.6)
    assert np.corrcoef(ws.signals[0, 0][inner], np.interp(t_new, t_raw, raw)[inner])[0, 1] > 0.99


def test_a_shorter_duration_cuts_each_record_into_consecutive_windows(tmp_path):
    root = tmp_path / "data"
    write_butppg(root, n_subjects=1, records_per_subject=2)
    ws = butppg.load_butppg(spec("butppg", root, duration_s=4.0), cache_dir=tmp_path / "cache")
    assert ws.windows.signals.shape == (4, 1, 128) and ws.windows.fs == pytest.approx(32.0)
    assert ws.windows.meta["window_index"].tolist() == [0, 1, 0, 1]
    assert ws.report["counts"]["records_with_tail_discarded"] == 2  # 300 samples = 2 x 120 + 60 left over


def test_unlabeled_nan_and_short_records_are_counted_never_silently_dropped(tmp_path, caplog):
    root = tmp_path / "data"
    write_butppg(root, n_subjects=3, records_per_subject=4, unlabeled=("100002",), nan=("101001",), short=("102001",))
    with pytest.raises(DataError, match=r"1 BUT-PPG record\(s\) hold NaN.*101001.*dataset.nonfinite=drop"):
        butppg.load_butppg(spec("butppg", root), cache_dir=tmp_path / "c1")
    caplog.set_level(logging.INFO)
    result = butppg.load_butppg(spec("butppg", root, nonfinite="drop"), cache_dir=tmp_path / "c2")
    assert result.report["excluded"] == {
        "no quality label": 1,
        "windows with NaN/Inf (dataset.nonfinite=drop)": 1,
        "shorter than duration_s=10 s": 1,
    }
    assert result.report["examples"]["no quality label"] == ["100002"]
    assert len(result.windows) == 12 - 3 and result.report["counts"]["records_listed"] == 12
    assert "1 excluded (no quality label), e.g. 100002" in caplog.text


def test_motion_task_has_eight_classes(but_root, tmp_path):
    root, truth = but_root
    ws = butppg.load_butppg(spec("butppg", root, task="motion"), cache_dir=tmp_path).windows
    assert ws.class_names == butppg.MOTION_CLASSES and len(ws.class_names) == 8
    ids = [f"{r:06d}" for r in ws.meta["record_id"]]
    assert ws.labels.tolist() == [truth[r]["motion"] for r in ids]
    assert set(ws.class_counts().values()) == {15}


def test_motion_codes_outside_0_to_7_stop_the_motion_task_only(tmp_path):
    root = tmp_path / "data"
    write_butppg(root, n_subjects=1, records_per_subject=3)
    info = root / "subject-info.csv"
    lines = info.read_text(encoding="utf-8-sig").splitlines()
    lines[2] = lines[2].replace(",1,1,120/80", ",1,9,120/80")  # record 100002: motion 1 -> 9
    info.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    with pytest.raises(DataError, match=r"column 'Motion' must hold integer codes 0..7; found \{'9': 1\}"):
        butppg.load_butppg(spec("butppg", root, task="motion"), cache_dir=tmp_path / "cache")
    ws = butppg.load_butppg(spec("butppg", root), cache_dir=tmp_path / "cache").windows
    assert ws.meta["motion"].tolist() == [0, -1, 2]


def test_missing_record_folders_error_or_skip_with_count(tmp_path):
    root = tmp_path / "data"
    write_butppg(root, n_subjects=2, records_per_subject=4, no_folder=("100003", "101002"))
    with pytest.raises(
        DataError,
        match=r"2 of 8 annotated BUT-PPG records have no record folder.*100003.*"
        r"dataset.missing_records=skip",
    ):
        butppg.load_butppg(spec("butppg", root), cache_dir=tmp_path / "c1")
    result = butppg.load_butppg(spec("butppg", root, missing_records="skip"), cache_dir=tmp_path / "c2")
    assert result.report["excluded"] == {"record folder missing": 2} and len(result.windows) == 6


def test_root_errors_name_the_thing_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"needs dataset.root.*ttm-train dataset=butppg dataset.root="):
        butppg.load_butppg(spec("butppg", None), cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"dataset.root=.*nowhere does not exist"):
        butppg.load_butppg(spec("butppg", tmp_path / "nowhere"), cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "subject-info.csv").write_text("ID\n")
    with pytest.raises(DataError) as err:
        butppg.load_butppg(spec("butppg", tmp_path / "empty"), cache_dir=tmp_path)
    assert "lacks quality-hr-ann.csv" in str(err.value) and "<root>/<ID>/<ID>_PPG.hea" in str(err.value)
    write_butppg(tmp_path / "download" / "butppg-2.0.0", n_subjects=1, records_per_subject=1)
    with pytest.raises(DataError, match=r"lacks quality-hr-ann.csv.*dataset.root=.*download/butppg-2.0.0\?"):
        butppg.load_butppg(spec("butppg", tmp_path / "download"), cache_dir=tmp_path)


def test_annotation_file_with_wrong_columns(tmp_path):
    root = tmp_path / "data"
    write_butppg(root, n_subjects=1, records_per_subject=2)
    (root / "quality-hr-ann.csv").write_text("\ufeffrecord,quality\n100001,1\n", encoding="utf-8")
    with pytest.raises(
        DataError,
        match=r"lacks the column\(s\) \['ID', 'Quality', 'HR'\]; its columns are "
        r"\['record', 'quality'\]",
    ):
        butppg.load_butppg(spec("butppg", root), cache_dir=tmp_path / "cache")


def test_the_cache_is_keyed_by_content_not_by_size_and_mtime(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_butppg(root, n_subjects=2, records_per_subject=3)
    first = butppg.load_butppg(spec("butppg", root), cache_dir=tmp_path / "cache")
    assert not first.hit

    reads = []
    real = butppg.read_record
    monkeypatch.setattr(butppg, "read_record", lambda base: reads.append(base) or real(base))
    second = butppg.load_butppg(spec("butppg", root), cache_dir=tmp_path / "cache")
    assert second.hit and reads == [] and second.report == first.report
    np.testing.assert_array_equal(second.windows.signals, first.windows.signals)

    dat = root / "101002" / "101002_PPG.dat"
    st = dat.stat()
    os.utime(dat, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # touched, the same bytes: still a hit
    assert butppg.load_butppg(spec("butppg", root), cache_dir=tmp_path / "cache").hit and reads == []
    # relabelled with the size and mtime kept (as `cp -p`, `rsync -a` and tar keep them): a new entry
    labels = root / "quality-hr-ann.csv"
    st, data = labels.stat(), bytearray(labels.read_bytes())
    at = data.index(b"101002,") + len(b"101002,")  # the record's quality digit: 0 <-> 1, same size
    data[at : at + 1] = b"1" if data[at : at + 1] == b"0" else b"0"
    labels.write_bytes(bytes(data))
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert labels.stat().st_size == st.st_size and labels.stat().st_mtime_ns == st.st_mtime_ns
    third = butppg.load_butppg(spec("butppg", root), cache_dir=tmp_path / "cache")
    assert not third.hit and len(reads) == 6
    flipped = list(third.windows.meta["record_id"]).index(101002)
    assert third.windows.labels[flipped] != first.windows.labels[flipped]
    # another setting is another entry, too
    assert not butppg.load_butppg(spec("butppg", root, task="motion"), cache_dir=tmp_path / "cache").hit


# --------------------------------------------------------------------------------------------------------
# VitalDB
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def vital_root(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "vital"
    root.mkdir()
    write_vital(root / "0001.vital", 60, rng, nan_span=(12.0, 12.5))
    write_vital(root / "0002.vital", 45, rng, flat_span=(20.0, 31.0))
    return root


def test_vitaldb_windows_are_unlabeled_memory_mapped_and_counted(vital_root, tmp_path, monkeypatch):
    import vitaldb as vitaldb_package

    opened = []
    real = vitaldb_package.VitalFile
    monkeypatch.setattr(vitaldb_package, "VitalFile", lambda *a, **k: opened.append(a[0]) or real(*a, **k))
    result = vitaldb.load_vitaldb(spec("vitaldb", vital_root), cache_dir=tmp_path / "cache")
    assert opened and all(isinstance(p, str) for p in opened)  # a path, never an integer case id
    ws = result.windows
    # 6 + 4 spans of 10 s; one has a NaN gap, one is flat
    assert ws.signals.shape == (8, 1, 128) and ws.fs == pytest.approx(12.8)
    assert isinstance(ws.signals, np.memmap) and not ws.signals.flags.writeable
    assert ws.class_names == ("unlabeled",) and not ws.labels.any()
    assert ws.subjects.tolist() == [0] * 5 + [1] * 3
    assert ws.meta["start_s"].tolist() == [0, 20, 30, 40, 50, 0, 10, 30]
    assert result.report["excluded"] == {"windows with NaN/Inf": 1, "flat windows (std < 1e-06)": 1}
    assert result.report["cases"] == ["0001.vital", "0002.vital"]
    assert np.isfinite(ws.signals).all()
    assert split_subject_wise(replace_subjects(ws), 3, 0, 0).train.class_names == ("unlabeled",)


def replace_subjects(ws):
    """Three cases' worth of subjects so that 3 folds can be formed from the tiny fixture."""
    from ttm_experiments.data.base import WindowSet

    return WindowSet(np.asarray(ws.signals), ws.labels, np.arange(len(ws)) % 3, ws.class_names, ws.fs, ws.meta)


def test_vitaldb_cache_hit_and_a_modified_file_invalidates_it(vital_root, tmp_path, monkeypatch):
    first = vitaldb.load_vitaldb(spec("vitaldb", vital_root), cache_dir=tmp_path / "cache")

    def boom(path, track):
        raise AssertionError("a cache hit must not read the .vital files")

    monkeypatch.setattr(vitaldb, "read_track", boom)
    second = vitaldb.load_vitaldb(spec("vitaldb", vital_root), cache_dir=tmp_path / "cache")
    assert second.hit and len(second.windows) == len(first.windows)
    monkeypatch.undo()
    write_vital(vital_root / "0002.vital", 90, np.random.default_rng(2))  # the case grew: 9 windows now
    third = vitaldb.load_vitaldb(spec("vitaldb", vital_root), cache_dir=tmp_path / "cache")
    assert not third.hit and len(third.windows) == 5 + 9


def test_vital_file_without_pleth_lists_its_tracks(tmp_path):
    root = tmp_path / "vital"
    root.mkdir()
    write_vital(root / "0007.vital", 20, np.random.default_rng(0), with_pleth=False)
    with pytest.raises(DataError) as err:
        vitaldb.load_vitaldb(spec("vitaldb", root), cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "0007.vital has no track 'SNUADC/PLETH'" in message
    assert "['SNUADC/ECG_II', 'Solar8000/HR']" in message and "dataset.track=" in message
    assert not (tmp_path / "cache" / "vitaldb").exists() or not any((tmp_path / "cache" / "vitaldb").iterdir())


def test_vitaldb_root_errors(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=r"no \.vital file under dataset.root"):
        vitaldb.load_vitaldb(spec("vitaldb", tmp_path / "none"), cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="dataset.channels=1"):
        vitaldb.load_vitaldb(spec("vitaldb", tmp_path / "none", channels=3), cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------------------------------------
# Preprocessed windows
# --------------------------------------------------------------------------------------------------------

SPLITS = {
    "train": ["100001", "100002", "101001", "101002", "104001", "104002"],
    "val": ["102001", "102002"],
    "test": ["103001", "103002"],
}


def test_windows_with_a_split_on_disk_keep_it(tmp_path, caplog):
    write_windows(tmp_path / "w", SPLITS)
    result = windows.load_windows_dir(spec("windows", tmp_path / "w"), cache_dir=tmp_path / "cache")
    ws = result.windows
    assert ws.signals.shape == (10, 1, 128) and ws.fs == pytest.approx(12.8)
    assert ws.meta["split"].tolist() == [0] * 6 + [1] * 2 + [2] * 2
    assert ws.subjects.tolist() == [100, 100, 101, 101, 104, 104, 102, 102, 103, 103]
    assert ws.labels.tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert {"hr", "motion"} <= set(ws.meta)
    caplog.set_level(logging.INFO)
    splits = split_subject_wise(ws, 5, 0, seed=0)
    assert [len(p) for _, p in splits.items()] == [6, 2, 2]
    assert splits.test.meta["record_id"].tolist() == [103001, 103002]
    assert "brings its own train/val/test split" in caplog.text
    with pytest.raises(DataError, match=r"dataset.fold=3: the dataset brings its own train/val/test split"):
        split_subject_wise(ws, 5, 3, seed=0)  # a fold sweep would repeat one split k times
    motion = windows.load_windows_dir(
        spec("windows", tmp_path / "w", task="motion"), cache_dir=tmp_path / "cache"
    ).windows
    assert motion.class_names == butppg.MOTION_CLASSES


def test_a_predefined_split_with_the_same_people_in_val_and_test_is_refused(tmp_path):
    write_windows(tmp_path / "w", {**SPLITS, "val": ["102001", "102002", "103003"], "test": ["103001", "103002"]})
    ws = windows.load_windows_dir(spec("windows", tmp_path / "w"), cache_dir=tmp_path / "cache").windows
    with pytest.raises(
        DataError, match=r"same subjects in two splits: 1 subject\(s\) in val and test \(e.g. \[103\]\)"
    ):
        split_subject_wise(ws, 5, 0, seed=0)
    allowed = split_subject_wise(ws, 5, 0, seed=0, allow_shared=True)  # the explicit opt-in, counted
    assert allowed.shared_subjects == 1


def test_windows_without_a_split_use_subject_wise_folds(tmp_path):
    write_windows(tmp_path / "w", {"": [f"{s}00{k}" for s in range(100, 106) for k in (1, 2)]})
    ws = windows.load_windows_dir(spec("windows", tmp_path / "w"), cache_dir=tmp_path / "cache").windows
    assert "split" not in ws.meta
    splits = split_subject_wise(ws, 3, 0, seed=0)
    parts = [set(p.subjects.tolist()) for _, p in splits.items()]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_overlapping_record_ids_are_refused_with_the_ids(tmp_path):
    write_windows(tmp_path / "w", {**SPLITS, "test": ["103001", "100002", "101001"]})
    with pytest.raises(
        DataError,
        match=r"2 record id\(s\) sit in more than one split: 100002 \(train/test\), "
        r"101001 \(train/test\)",
    ):
        windows.load_windows_dir(spec("windows", tmp_path / "w"), cache_dir=tmp_path / "cache")


def test_npz_without_signal_lists_its_keys(tmp_path):
    write_windows(tmp_path / "w", SPLITS, drop_signal="102002")
    with pytest.raises(DataError) as err:
        windows.load_windows_dir(spec("windows", tmp_path / "w"), cache_dir=tmp_path / "cache")
    assert "window_000001.npz has no `signal` array" in str(err.value)
    assert "['quality', 'hr', 'motion', 'record_id', 'fs']" in str(err.value)


def test_windows_of_another_length_are_resampled_explicitly(tmp_path, caplog):
    write_windows(tmp_path / "w", SPLITS, length=300, fs=30.0)
    with caplog.at_level(logging.WARNING):
        result = windows.load_windows_dir(spec("windows", tmp_path / "w"), cache_dir=tmp_path / "cache")
    assert result.windows.signals.shape == (10, 1, 128) and result.windows.fs == pytest.approx(12.8)
    assert "resampled explicitly to 128 samples" in caplog.text
    assert any("resampled explicitly" in n for n in result.report["notes"])


def test_a_regression_target_is_not_a_class_label(tmp_path):
    write_windows(tmp_path / "w", SPLITS)
    with pytest.raises(ConfigError, match="dataset.task=hr.*not a class label"):
        windows.load_windows_dir(spec("windows", tmp_path / "w", task="hr"), cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"has no `spo2` key.*its keys are"):
        windows.load_windows_dir(spec("windows", tmp_path / "w", task="spo2"), cache_dir=tmp_path / "cache")


def test_windows_cache_hit(tmp_path, monkeypatch):
    write_windows(tmp_path / "w", SPLITS)
    windows.load_windows_dir(spec("windows", tmp_path / "w"), cache_dir=tmp_path / "cache")
    monkeypatch.setattr(windows, "_read", lambda *a: (_ for _ in ()).throw(AssertionError("read on a cache hit")))
    assert windows.load_windows_dir(spec("windows", tmp_path / "w"), cache_dir=tmp_path / "cache").hit


def test_windows_without_a_subject_key_are_refused_unless_subject_from_record(tmp_path):
    from ttm_experiments.config.schema import DatasetConf, SubjectFrom
    from ttm_experiments.data.windows import load_windows_dir

    write_windows(tmp_path / "w", {"": [f"rec{k}" for k in range(6)]})
    conf = DatasetConf(name="windows", loader="windows", root=str(tmp_path / "w"), window_length=128, duration_s=10.0)
    with pytest.raises(DataError, match="6 of 6 window files have no subject.*dataset.subject_from=record"):
        load_windows_dir(loader_settings(conf), cache_dir=tmp_path / "cache")
    conf.subject_from = SubjectFrom.record
    ws = load_windows_dir(loader_settings(conf), cache_dir=tmp_path / "cache").windows
    assert len(np.unique(ws.subjects)) == 6


# --------------------------------------------------------------------------------------------------------
# Through the train entrypoint
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["butppg", "vitaldb", "windows"])
def test_a_real_dataset_composes_without_root_and_then_says_it_needs_one(smoke, tmp_path, name):
    from ttm_experiments.config import spec as specs
    from ttm_experiments.data.prepare import load_windows

    config = specs.to_config(smoke(f"dataset={name}"))  # no Hydra MISSING error at compose time
    with pytest.raises(DataError, match=rf"dataset={name} needs dataset.root.*ttm-train dataset={name} dataset.root="):
        load_windows(config.dataset, seed=config.seed, cache_dir=tmp_path)


@pytest.mark.parametrize("task,classes", [("quality", ("poor", "good")), ("motion", butppg.MOTION_CLASSES)])
def test_smoke_training_on_the_butppg_fixture(but_root, smoke, runs_dir, task, classes):
    root, _ = but_root
    objective = train(
        smoke("dataset=butppg", f"dataset.root={root}", f"dataset.task={task}", f"experiment_name=butppg-{task}")
    )
    assert 0.0 <= objective <= 1.0
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name(f"butppg-{task}").experiment_id])
    parent = next(r for r in found if "mlflow.parentRunId" not in r.data.tags)
    metrics = parent.data.metrics
    auroc = metrics["test/auroc"]  # one-vs-rest macro over 8 classes for motion; never a 0.0 placeholder
    assert math.isfinite(auroc) and 0.0 < auroc <= 1.0
    assert all(f"test/acc/{c}" in metrics for c in classes)
    assert parent.data.tags["dataset"] == "butppg"
