"""Device exports read by `ttm-predict` (data/recordings.py, text_tables.py, clock.py): every layout written here
by the test in the form devices export it, the clock rules (units, jitter, bursts, gaps, stamps that go back),
missing values, and each refusal: one line whose fix, applied, reads the file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ttm_experiments.config.schema import TimeUnit
from ttm_experiments.data.recordings import Recording, cut_windows, read_recording
from ttm_experiments.errors import ConfigError, DataError, UserError

WINDOW_S = 10.0
EPOCH_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def _read(path: Path, **given) -> Recording:
    kwargs = {"column": None, "channels": None, "fs": None, "gap_s": WINDOW_S, **given}
    return read_recording(str(path), **kwargs)


def _write(path: Path, header: str | None, rows, sep: str) -> Path:
    lines = ([header] if header is not None else []) + [sep.join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _ppg(t: np.ndarray) -> np.ndarray:
    """Raw ADC counts around 1.5e6, a smooth pulse (interpolation between samples is exact enough to compare)."""
    return 1.5e6 + 2e4 * np.sin(2 * np.pi * 1.2 * t) + 5e3 * np.sin(2 * np.pi * 0.25 * t)


def _only_segment(rec: Recording) -> np.ndarray:
    assert len(rec.segments) == 1, [p.start_s for p in rec.segments]
    return rec.segments[0].signal[0]


def _fix(message: str) -> dict:
    """The `predict.<key>=<value>` pairs right after "Fix:" in a refusal, as read_recording's arguments."""
    fix = message.split("Fix:", 1)[1]
    pairs = [(k, v) for k, v in re.findall(r"predict\.(\w+)=([^\s,()]+)", fix) if not v.startswith("<")][:1]
    assert pairs, message
    return {k: TimeUnit(v) if k == "time_unit" else (float(v) if k == "fs" else v) for k, v in pairs}


def _refused(error: type, match: str, path: Path, **given) -> str:
    with pytest.raises(error, match=match) as info:
        _read(path, **given)
    message = str(info.value)
    assert "\n" not in message and "Fix:" in message, message
    return message


# -- layouts ------------------------------------------------------------------------------------------------------
def test_tab_separated_export_with_ms_timestamps_and_adc_counts(tmp_path):
    t = np.arange(3000) / 100.0
    x = np.round(_ppg(t))
    rows = [(EPOCH_MS + int(round(s * 1e3)), int(v), 72) for s, v in zip(t, x)]
    path = _write(tmp_path / "watch.tsv", "timestamp\tppg\thrm", rows, "\t")
    rec = _read(path, column="ppg", time_column="timestamp")
    assert rec.fs == 100.0 and rec.record_id == "watch"
    assert np.array_equal(_only_segment(rec), x)  # a regular clock: the samples themselves, none lost
    head, unit, rate = rec.notes[:3]
    assert head.startswith("input watch.tsv: tab-separated, header; 3000 rows; signal 'ppg' (column 1)")
    assert unit.startswith("clock 'timestamp': ms (detected") and "starts 2023-11-14T22:13:20.000 UTC" in unit
    assert rate == "rate 100 Hz from the clock (median step 10 ms); regular: every step 10 ms"
    by_index = _read(path, column="1", time_column="0")
    assert np.array_equal(_only_segment(by_index), x)


def test_semicolon_export_with_decimal_commas(tmp_path):
    t = np.arange(1500) / 50.0
    x = np.round(np.sin(2 * np.pi * t), 4)
    rows = [(f"{s:.2f}".replace(".", ","), f"{v:.4f}".replace(".", ",")) for s, v in zip(t, x)]
    rec = _read(_write(tmp_path / "rec.csv", "t;pleth", rows, ";"), column="pleth", time_column="t")
    assert rec.fs == 50.0
    assert np.allclose(_only_segment(rec), x, atol=1e-9)
    assert "semicolon-separated, header, decimal comma" in rec.notes[0]
    assert "s (detected: its median step 0.02 is 50 Hz in s" in rec.notes[1]


def test_whitespace_export_with_preamble_and_comments(tmp_path):
    x = np.arange(2000) % 97 * 1.0
    path = tmp_path / "rec.txt"
    rows = "\n".join(f"{i}   {v:g}   0" for i, v in enumerate(x))
    path.write_text(f"# exported by a device\nDevice: PulseSensor v2\n\nsample   red   ir\n{rows}\n")
    rec = _read(path, column="red", fs=200)
    assert np.array_equal(_only_segment(rec), x) and rec.fs == 200
    assert "whitespace-separated, header, 1 preamble line(s) skipped" in rec.notes[0]


def test_headerless_single_column_keeps_its_first_sample(tmp_path):
    x = np.round(_ppg(np.arange(2500) / 100.0) / 1e3, 3)  # the first row is data: 1500.0...
    path = tmp_path / "finger.txt"
    path.write_text("\n".join(f"{v:.3f}" for v in x) + "\n")
    rec = _read(path, fs=100)  # no predict.column: the file has one
    assert np.array_equal(_only_segment(rec), x)
    assert (
        rec.notes[0] == "input finger.txt: one column, no header; 2500 rows; signal '0' (column 0); 100 Hz (predict.fs)"
    )


def test_headerless_columns_are_chosen_by_index(tmp_path):
    rows = [(i * 10, i % 7, -i) for i in range(1200)]
    path = _write(tmp_path / "rec.csv", None, rows, ",")
    rec = _read(path, column="1", time_column="0", time_unit=TimeUnit.ms)
    assert np.array_equal(_only_segment(rec), np.arange(1200) % 7) and rec.fs == 100


def test_iso_datetime_column(tmp_path):
    t = np.arange(1300) / 25.0
    stamps = np.datetime64("2024-03-01T09:30:00.000") + np.round(t * 1e3).astype("timedelta64[ms]")
    rows = [(f"{s}Z", f"{v:.5f}") for s, v in zip(stamps, np.sin(t))]
    rec = _read(_write(tmp_path / "rec.csv", "time,ppg", rows, ","), column="ppg", time_column="time")
    assert rec.fs == 25.0 and np.allclose(_only_segment(rec), np.round(np.sin(t), 5))
    assert rec.notes[1] == "clock 'time': ISO 8601 date-times"
    with pytest.raises(ConfigError, match=r"holds date-times, not counts of ms\. Fix: predict\.time_unit=datetime"):
        _read(tmp_path / "rec.csv", column="ppg", time_column="time", time_unit=TimeUnit.ms)


# -- the clock ----------------------------------------------------------------------------------------------------
def test_jittered_clock_is_interpolated_onto_its_rate_and_reported(tmp_path):
    rng = np.random.default_rng(1)
    t = np.arange(3000) / 100.0 + rng.uniform(-0.003, 0.003, 3000)  # +-3 ms on a 10 ms step
    stamps = np.round(t * 1e3, 3)
    rec = _read(_write(tmp_path / "j.csv", "ms,ppg", zip(stamps, _ppg(t)), ","), column="ppg", time_column="ms")
    assert rec.fs == 100.0
    piece = rec.segments[0]
    grid = piece.start_s + np.arange(piece.signal.shape[1]) / rec.fs + stamps[0] / 1e3
    assert np.max(np.abs(piece.signal[0] - _ppg(grid))) < 0.01 * 2e4  # within 1 % of the pulse amplitude
    sd = re.search(r"irregular: step sd (\d+\.\d)% of the median", rec.notes[2])
    assert sd and 20 < float(sd.group(1)) < 40  # uniform +-3 ms on both stamps: sd of a step ~ 24 %
    assert rec.notes[2].endswith("linearly interpolated onto a uniform 100 Hz grid")


def test_a_burst_after_a_pause_keeps_the_rate_and_is_counted(tmp_path):
    t = list(np.arange(0, 12, 0.01))  # 100 Hz, then a 0.3 s pause, then 20 samples 1 ms apart, then 100 Hz
    t += list(12.29 + np.arange(1, 21) * 0.001) + list(12.31 + np.arange(1, 1500) * 0.01)
    t = np.round(np.asarray(t) * 1e3).astype(int) + EPOCH_MS
    rec = _read(_write(tmp_path / "b.csv", "ts,ppg", zip(t, np.arange(len(t))), ","), column="ppg", time_column="ts")
    assert rec.fs == 100.0 and len(rec.segments) == 1
    assert "longest 301 ms, 1 step(s) over 1.5x the median, 19 under 0.5x" in rec.notes[2]


def test_stamps_rounded_to_whole_ms_give_the_true_rate(tmp_path):
    t = np.floor(np.arange(3000) / 128.0 * 1e3).astype(int)  # steps of 7 and 8 ms: median 8 (125 Hz)
    rec = _read(_write(tmp_path / "r.csv", "t,ppg", zip(t, np.zeros(3000)), ","), column="ppg", time_column="t")
    assert rec.fs == 128.0


def test_a_gap_longer_than_a_window_splits_and_no_window_spans_it(tmp_path):
    t = np.concatenate([np.arange(0, 25, 0.01), 25 + 12.5 + np.arange(0, 21, 0.01)])  # 12.5 s without samples
    ms = np.round(t * 1e3).astype(int) + EPOCH_MS
    rec = _read(_write(tmp_path / "g.csv", "t,ppg", zip(ms, _ppg(t)), ","), column="ppg", time_column="t")
    assert [p.start_s for p in rec.segments] == [0.0, 37.5]
    assert "1 clock step(s) longer than a window (10 s): 12.5 s at 25.0 s" in rec.notes[-1]
    assert "split there into 2 segments (2 at least one window long)" in rec.notes[-1]
    cut = cut_windows(rec, window_s=WINDOW_S, context_length=128, hop_s=5)
    assert cut.start_s == pytest.approx([0.0, 5.0, 10.0, 15.0, 37.5, 42.5, 47.5])  # true times from the start
    assert cut.segment.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert all(s + WINDOW_S <= 25.0 or s >= 37.5 for s in cut.start_s)


def test_a_gap_shorter_than_a_window_is_interpolated(tmp_path):
    t = np.concatenate([np.arange(0, 25, 0.01), 25 + 2 + np.arange(0, 21, 0.01)])
    rec = _read(_write(tmp_path / "g.csv", "t,ppg", zip(t, _ppg(t)), ","), column="ppg", time_column="t")
    assert len(rec.segments) == 1 and "longest 2.01 s" in rec.notes[2]


def test_a_few_stamps_that_go_back_are_dropped_and_counted(tmp_path):
    ms = np.arange(3000) * 10
    ms[[500, 1500]] = ms[[499, 1499]]  # two repeats
    ms[2000] -= 25  # one step back
    rec = _read(_write(tmp_path / "n.csv", "t,ppg", zip(ms, np.arange(3000)), ","), column="ppg", time_column="t")
    assert "3 stamp(s) that do not advance dropped (2 repeat, 1 go back)" in rec.notes
    assert rec.fs == 100.0


def test_stamps_out_of_order_are_refused_with_a_fix_that_works(tmp_path):
    ms = np.arange(3000) * 10
    rng = np.random.default_rng(0)
    order = np.arange(3000)
    order[1000:1100] = rng.permutation(order[1000:1100])
    path = _write(tmp_path / "o.csv", "t,ppg", zip(ms[order], order), ",")
    message = _refused(DataError, r"do not advance .* not in time order", path, column="ppg", time_column="t")
    assert "Fix: sort the file by its time column, or predict.fs=<Hz> without predict.time_column" in message
    assert _read(path, column="ppg", fs=100).fs == 100.0


def test_packet_stamps_repeating_are_refused(tmp_path):
    ms = np.repeat(np.arange(600) * 50, 5)  # 5 samples per 50 ms packet, one stamp each
    path = _write(tmp_path / "p.csv", "t,ppg", zip(ms, np.arange(3000)), ",")
    message = _refused(DataError, r"2400 repeat an earlier stamp", path, column="ppg", time_column="t")
    assert message.endswith("(the clock ignored) (these 3000 stamps span 29.9 s: 100.1 Hz on average)")
    assert _read(path, column="ppg", fs=100).fs == 100.0


# -- missing values -----------------------------------------------------------------------------------------------
def test_missing_values_split_the_recording_and_are_never_interpolated(tmp_path):
    x = [f"{v:.3f}" for v in np.sin(np.arange(4000) / 10)]
    x[1500:1530] = ["NaN"] * 20 + [""] * 5 + ["ERR"] * 5  # 0.3 s of nothing usable at 100 Hz
    rec = _read(_write(tmp_path / "m.csv", "n,ppg", enumerate(x), ","), column="ppg", fs=100)
    assert [p.start_s for p in rec.segments] == [0.0, 15.3]
    assert [p.signal.shape[1] for p in rec.segments] == [1500, 2470]
    assert "30 without a number" in rec.notes[0]
    assert "1 run(s) of missing values (NaN or not a number; never interpolated): 310 ms at 15.0 s" in rec.notes[-1]
    cut = cut_windows(rec, window_s=WINDOW_S, context_length=128, hop_s=None)
    assert cut.start_s == pytest.approx([0.0, 15.3, 25.3]) and cut.segment.tolist() == [0, 1, 1]
    assert not any(s < 15.3 < s + WINDOW_S for s in cut.start_s)


def test_short_segments_are_left_out_and_said(tmp_path):
    x = np.ones(3000)
    x[800] = np.nan  # a stretch of 8 s, then 22 s
    np.savez(tmp_path / "r.npz", signal=x, fs=100.0)
    rec = _read(tmp_path / "r.npz")
    cut = cut_windows(rec, window_s=WINDOW_S, context_length=128, hop_s=None)
    assert cut.start_s == pytest.approx([8.01, 18.01]) and cut.segment.tolist() == [1, 1]
    assert "1 segment(s) shorter than a window (10 s) not scored: 8 s in all" in cut.notes


def test_no_stretch_of_one_window_is_refused(tmp_path):
    x = np.ones(3000)
    x[::700] = np.nan
    np.savez(tmp_path / "r.npz", signal=x, fs=100.0)
    rec = _read(tmp_path / "r.npz")
    with pytest.raises(DataError, match=r"5 segments between gaps, the longest 6.99 s .* never padded nor span a gap"):
        cut_windows(rec, window_s=WINDOW_S, context_length=128, hop_s=None)


# -- refusals: one line, a fix that works -------------------------------------------------------------------------
def _export(tmp_path: Path) -> Path:
    rows = [(EPOCH_MS + 10 * i, 1_500_000 + i % 50, 70) for i in range(1500)]
    return _write(tmp_path / "watch.tsv", "timestamp\tppg\thrm", rows, "\t")


def test_no_column_given_for_a_table_of_several(tmp_path):
    path = _export(tmp_path)
    message = _refused(ConfigError, r"has 3 columns, \['timestamp', 'ppg', 'hrm'\]", path, fs=100)
    assert "predict.column=ppg (and predict.time_column=timestamp for its clock)" in message
    assert _read(path, fs=100, **_fix(message)).segments


def test_unknown_column_name_or_index(tmp_path):
    path = _export(tmp_path)
    _refused(
        ConfigError,
        r"predict.column=pleth: it has no column 'pleth'; its columns are \['timestamp'",
        path,
        column="pleth",
        fs=100,
    )
    _refused(ConfigError, r"predict.time_column=3: .*\(0-based indexes 0..2\)", path, column="ppg", time_column="3")


def test_no_rate_suggests_the_clock(tmp_path):
    path = _export(tmp_path)
    message = _refused(ConfigError, "has no sampling rate", path, column="ppg")
    assert message.endswith(
        "Fix: predict.fs=<Hz>, e.g. predict.fs=30, or predict.time_column=timestamp (its clock gives the rate)"
    )
    assert _read(path, column="ppg", time_column="timestamp").fs == 100.0


def test_ambiguous_unit_names_time_unit(tmp_path):
    path = _write(tmp_path / "u.csv", "t,ppg", ((i, i % 9) for i in range(1200)), ",")  # steps of 1: 1 Hz s, 1 kHz ms
    message = _refused(
        ConfigError,
        r"cannot tell the unit of its clock: its median step 1 is 1 Hz in s, 1 kHz in ms",
        path,
        column="ppg",
        time_column="t",
    )
    assert message.endswith("Fix: predict.time_unit=s (or ms)")
    assert _read(path, column="ppg", time_column="t", **_fix(message)).fs == 1.0
    assert _read(path, column="ppg", time_column="t", time_unit=TimeUnit.ms).fs == 1000.0


def test_epoch_magnitude_decides_between_plausible_units(tmp_path):
    path = _write(tmp_path / "e.csv", "t,ppg", ((EPOCH_MS + i, i % 9) for i in range(12000)), ",")
    rec = _read(path, column="ppg", time_column="t")
    assert rec.fs == 1000.0 and "its magnitude is epoch ms" in rec.notes[1]


def test_numbers_are_not_datetimes(tmp_path):
    path = _export(tmp_path)
    _refused(
        ConfigError,
        r"holds numbers, not date-times",
        path,
        column="ppg",
        time_column="timestamp",
        time_unit=TimeUnit.datetime,
    )


def test_fs_that_disagrees_with_the_clock(tmp_path):
    path = _export(tmp_path)
    message = _refused(
        ConfigError,
        r"predict.fs=30 but the clock of predict.time_column=timestamp runs at 100 Hz",
        path,
        column="ppg",
        time_column="timestamp",
        fs=30,
    )
    assert "Fix: drop predict.fs (the clock gives the rate), or drop predict.time_column" in message
    assert _read(path, column="ppg", time_column="timestamp").fs == 100.0
    assert _read(path, column="ppg", time_column="timestamp", fs=100.5).fs == 100.5  # agreeing: the exact rate given


def test_a_column_without_numbers(tmp_path):
    rows = [(i * 10, "ok", i) for i in range(1200)]
    path = _write(tmp_path / "s.csv", "t,status,ppg", rows, ",")
    message = _refused(DataError, r"column 'status' holds no numbers \(e.g. 'ok'\)", path, column="status", fs=100)
    assert "numeric columns ['t', 'ppg']" in message


def test_rows_that_do_not_split_alike(tmp_path):
    path = tmp_path / "ragged.txt"
    path.write_text("\n".join(" ".join(["1"] * (1 + i % 4)) for i in range(100)))
    _refused(DataError, r"do not split into the same number of fields", path, fs=100)


def test_binary_file_and_missing_file(tmp_path):
    (tmp_path / "rec.bin").write_bytes(b"\x00\x01\x02" * 100)
    _refused(DataError, "is a binary file, not a text table", tmp_path / "rec.bin", fs=100)
    _refused(ConfigError, "does not exist", tmp_path / "nope.csv", fs=100)


def test_time_unit_without_time_column_and_the_same_column_twice(tmp_path):
    path = _export(tmp_path)
    _refused(
        ConfigError,
        "predict.time_unit is set but predict.time_column is not",
        path,
        column="ppg",
        fs=100,
        time_unit=TimeUnit.ms,
    )
    _refused(ConfigError, "are the same column", path, column="ppg", time_column="ppg")


def test_every_refusal_is_a_user_error():
    assert issubclass(ConfigError, UserError) and issubclass(DataError, UserError)


def test_keys_an_input_kind_does_not_read_are_refused(tmp_path):
    np.savez(tmp_path / "r.npz", signal=np.ones(1500), fs=100.0)
    _refused(
        ConfigError,
        r"predict.time_column applies to text tables; .* is an .npz\. Fix: drop predict.time_column",
        tmp_path / "r.npz",
        time_column="t",
    )
    _refused(
        ConfigError,
        r"predict.channels applies to WFDB records; .* is a text table",
        _export(tmp_path),
        column="ppg",
        fs=100,
        channels=["R"],
    )


def test_a_clock_that_gives_no_ppg_rate_in_any_unit(tmp_path):
    ns = 1_700_000_000_000_000_000 + 10_000_000 * np.arange(1200)  # epoch ns at 100 Hz: a unit not offered
    path = _write(tmp_path / "ns.csv", "t,ppg", zip(ns, np.arange(1200) % 9), ",")
    message = _refused(DataError, r"no PPG rate \(1 Hz..5000 Hz\) in any unit", path, column="ppg", time_column="t")
    assert "else predict.fs=<Hz> without predict.time_column" in message
    assert _read(path, column="ppg", fs=100).fs == 100.0
