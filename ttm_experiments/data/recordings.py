"""Raw recordings for `ttm-predict`, as devices export them, cut into a model's windows.

`predict.input` is a text table (CSV, TSV, semicolon- or whitespace-separated, with or without a header:
`data/text_tables.py`), an .npz (`signal`, optionally `fs`) or a WFDB record. A table's signal is
`predict.column` (a name or a 0-based index; a table with one column needs none) and its rate comes from
`predict.fs` or from its clock, `predict.time_column` (`data/clock.py`: the unit, jitter, bursts, gaps).

A recording becomes segments: uniform runs of samples between gaps (a clock step longer than one window, missing
values). A window spans the seconds the model was trained on (`window_s`, its `dataset.duration_s`):
`window_s * fs` samples of one segment, resampled to the model's context with `scipy.signal.resample_poly` at the
exact ratio and `padtype="line"`, as the BUT-PPG and VitalDB loaders do. Nothing is padded and no window spans a
gap; each window carries its start in seconds from the recording's first sample. What reading did (the layout,
the clock, the gaps) comes back as one line per fact, for `ttm-predict` to print.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ttm_experiments.config.schema import TimeUnit
from ttm_experiments.data import clock
from ttm_experiments.data.text_tables import Table, pick_column, read_table
from ttm_experiments.errors import ConfigError, DataError

FS_RANGE = (1.0, 100_000.0)  # Hz; outside it a rate is a unit mistake (kHz for Hz, a period for a rate)
TIME_NAME = re.compile(r"time|stamp|date|clock|^t$|^ts$", re.IGNORECASE)  # only to suggest predict.time_column


@dataclass
class Recording:
    segments: list[clock.Piece]  # uniform runs between gaps, in time order
    fs: float
    record_id: str
    notes: list[str] = field(default_factory=list)  # what reading did, one line each


@dataclass
class Cut:
    signals: np.ndarray  # float32 [N, C, context]
    start_s: np.ndarray  # [N] seconds from the recording's first sample
    segment: np.ndarray  # [N] index of the recording's segment the window lies in
    notes: list[str]


def check_fs(fs: float | None, where: str, hint: str = "") -> float:
    if fs is None:
        raise ConfigError(f"{where} has no sampling rate. Fix: predict.fs=<Hz>, e.g. predict.fs=30{hint}")
    if not FS_RANGE[0] <= float(fs) <= FS_RANGE[1]:
        raise ConfigError(
            f"the sampling rate of {where} is {fs:g} Hz, outside {FS_RANGE[0]:g}..{FS_RANGE[1]:g} Hz. "
            "Fix: predict.fs=<the rate in Hz>"
        )
    return float(fs)


def _rate(found: float | None, given: float | None, where: str) -> float:
    """The file's own rate, or predict.fs where it has none; both and different is an error."""
    if found is not None and given is not None and not np.isclose(found, given):
        raise ConfigError(
            f"{where} declares {found:g} Hz but predict.fs={given:g}. Fix: drop predict.fs "
            "(the file's rate is used) or correct the file"
        )
    return check_fs(found if found is not None else given, where)


def _gap_notes(gaps: list[clock.Gap], segments: list[clock.Piece], fs: float, gap_s: float) -> list[str]:
    kept = sum(p.signal.shape[1] >= round(gap_s * fs) for p in segments)
    line = clock.describe_gaps(gaps, gap_s, kept)
    return [line] if line else []


def _uniform(values: np.ndarray, fs: float, record_id: str, gap_s: float, notes: list[str]) -> Recording:
    pieces, gaps = clock.uniform_pieces(values, fs)
    return Recording(pieces, fs, record_id, notes + _gap_notes(gaps, pieces, fs, gap_s))


# -- text tables --------------------------------------------------------------------------------------------------
def _value_column(table: Table, column: str | None, time_index: int | None, where: str) -> int:
    if column is not None:
        return pick_column(table, column, "predict.column", where)
    others = [i for i, c in enumerate(table.columns) if i != time_index and any(str(v).strip() for v in c)]
    if len(others) == 1:
        return others[0]
    numeric = [i for i in others if np.isfinite(table.numbers(i)).mean() >= 0.5]
    signal = [i for i in numeric if not TIME_NAME.search(table.names[i])] or numeric or others
    clocks = [i for i in numeric if TIME_NAME.search(table.names[i])] if time_index is None else []
    also = (
        f" (and predict.time_column={table.names[clocks[0]]} for its clock)" if clocks and table.layout.header else ""
    )
    raise ConfigError(
        f"{where} has {len(table.names)} columns, {table.listing()}, and predict.column is not set. "
        f"Fix: predict.column=<a name or 0-based index>, e.g. predict.column={table.names[signal[0]]}{also}"
    )


def _signal(table: Table, index: int, where: str) -> np.ndarray:
    values = table.numbers(index)
    if not np.isfinite(values).any():
        numeric = [n for i, n in enumerate(table.names) if np.isfinite(table.numbers(i)).any()]
        sample = next((str(v) for v in table.columns[index] if str(v).strip()), "")
        raise DataError(
            f"{where}: column {table.names[index]!r} holds no numbers (e.g. {sample!r}). "
            f"Fix: predict.column=<one of the numeric columns {numeric}>"
        )
    return values


def _clocked(
    table: Table, values: np.ndarray, time_index: int, unit: TimeUnit | None, fs: float | None, gap_s: float, where: str
) -> tuple[list[clock.Piece], list[clock.Gap], float, list[str]]:
    key = f"predict.time_column={table.names[time_index]}"
    seconds, how = clock.clock_seconds(table.numbers(time_index), table.columns[time_index], unit, key)
    keep, dropped = clock.advancing(seconds, key)
    seconds, values = seconds[keep], values[keep]
    clock_fs, median = clock.clock_rate(seconds, gap_s)
    rate = check_fs(clock.rate_from_clock(clock_fs, median, fs, key), where)
    pieces, gaps = clock.gridded_pieces(values[None, :], seconds, rate, gap_s)
    irregular = clock.irregularity(seconds, np.isfinite(values), gap_s)
    agrees = f", predict.fs={fs:g} agrees" if fs is not None else ""
    grid = "" if irregular.startswith("regular") else f"; linearly interpolated onto a uniform {rate:g} Hz grid"
    notes = [
        f"clock {table.names[time_index]!r}: {how}",
        f"rate {clock_fs:g} Hz from the clock (median step {clock.fmt_s(median)}{agrees}); {irregular}{grid}",
    ]
    return pieces, gaps, rate, notes + ([dropped] if dropped else [])


def _read_table(
    path: Path, column: str | None, time_column: str | None, unit: TimeUnit | None, fs: float | None, gap_s: float
) -> Recording:
    where = f"predict.input={path}"
    table = read_table(path)
    time_index = None if time_column is None else pick_column(table, time_column, "predict.time_column", where)
    index = _value_column(table, column, time_index, where)
    if index == time_index:
        raise ConfigError(
            f"{where}: predict.column and predict.time_column are the same column ({table.names[index]!r}). "
            "Fix: predict.column=<the signal's column>"
        )
    values = _signal(table, index, where)
    missing = int((~np.isfinite(values)).sum())
    head = (
        f"input {path.name}: {table.layout.describe()}; {len(values)} rows; signal {table.names[index]!r} "
        f"(column {index})" + (f", {missing} without a number" if missing else "")
    )
    if time_index is None:
        if unit is not None:
            raise ConfigError(
                f"{where}: predict.time_unit is set but predict.time_column is not. Fix: both, or neither"
            )
        clocks = [n for n in table.names if TIME_NAME.search(n)] if table.layout.header else []
        hint = f", or predict.time_column={clocks[0]} (its clock gives the rate)" if clocks else ""
        rate = check_fs(fs, where, hint)
        return _uniform(values[None, :], rate, path.stem, gap_s, [f"{head}; {rate:g} Hz (predict.fs)"])
    pieces, gaps, rate, notes = _clocked(table, values, time_index, unit, fs, gap_s, where)
    return Recording(pieces, rate, path.stem, [head, *notes, *_gap_notes(gaps, pieces, rate, gap_s)])


# -- .npz and WFDB ------------------------------------------------------------------------------------------------
def _read_npz(path: Path, fs: float | None, gap_s: float) -> Recording:
    with np.load(path, allow_pickle=False) as data:
        if "signal" not in data.files:
            raise ConfigError(
                f"predict.input={path} has no `signal` array (it holds {data.files}). Fix: save the "
                "signal as np.savez(path, signal=x, fs=rate)"
            )
        x = np.asarray(data["signal"], dtype=np.float64)
        found = float(data["fs"]) if "fs" in data.files else None
        rid = str(data["record_id"]) if "record_id" in data.files else path.stem
    if x.ndim not in (1, 2):
        raise DataError(
            f"predict.input={path}: `signal` has shape {x.shape}; expected [samples] or [channels, samples]"
        )
    x = x if x.ndim == 2 else x[None, :]
    rate = _rate(found, fs, f"predict.input={path}")
    head = f"input {path.name}: .npz, {x.shape[0]} channel(s) of {x.shape[1]} samples at {rate:g} Hz"
    return _uniform(x, rate, rid, gap_s, [head])


def _read_wfdb(base: Path, channels: list[str] | None, fs: float | None, gap_s: float) -> Recording:
    import wfdb

    record = wfdb.rdrecord(str(base))
    names = list(record.sig_name or [])
    x = np.asarray(record.p_signal, dtype=np.float64).T  # [channels, samples]
    if channels:
        missing = [c for c in channels if c not in names]
        if missing:
            raise ConfigError(
                f"predict.channels={channels}: the record {base} has no signal {missing}; its signals "
                f"are {names}. Fix: predict.channels=[<names of those>]"
            )
        x = x[[names.index(c) for c in channels]]
    rate = _rate(float(record.fs) if record.fs else None, fs, f"the WFDB record {base}")
    head = f"input {base.name}: WFDB record, signals {channels or names}, {x.shape[1]} samples at {rate:g} Hz"
    return _uniform(x, rate, base.name, gap_s, [head])


def _only_for(keys: dict, kind: str, what: str) -> None:
    """A key that this kind of input does not read is an error, not a setting silently ignored."""
    given = [k for k, v in keys.items() if v is not None]
    if given:
        raise ConfigError(f"{given[0]} applies to {kind}; {what}. Fix: drop {given[0]}")


def read_recording(
    path: str,
    *,
    column: str | None,
    channels: list[str] | None,
    fs: float | None,
    gap_s: float,
    time_column: str | None = None,
    time_unit: TimeUnit | None = None,
) -> Recording:
    """`predict.input`: an .npz, a WFDB record given without extension (`<path>.hea` beside it), or a text table.

    `gap_s` (one model window) is the longest clock step that is interpolated; a longer one splits the recording.
    """
    p = Path(path).expanduser()
    table_keys = {"predict.column": column, "predict.time_column": time_column, "predict.time_unit": time_unit}
    if p.suffix.lower() == ".npz" and p.is_file():
        _only_for(table_keys | {"predict.channels": channels}, "text tables", f"predict.input={path} is an .npz")
        return _read_npz(p, fs, gap_s)
    base = p.with_suffix("") if p.suffix.lower() in (".hea", ".dat") else p
    if base.with_name(base.name + ".hea").is_file():
        _only_for(table_keys, "text tables", f"predict.input={path} is a WFDB record (predict.channels picks signals)")
        return _read_wfdb(base, channels, fs, gap_s)
    if p.is_file():
        _only_for({"predict.channels": channels}, "WFDB records", f"predict.input={path} is a text table")
        return _read_table(p, column, time_column, time_unit, fs, gap_s)
    raise ConfigError(
        f"predict.input={path} does not exist: not a file (a text table or an .npz) nor a WFDB record (no "
        f"{base}.hea). Fix: the path of one of those (a WFDB record without its extension)"
    )


# -- windows ------------------------------------------------------------------------------------------------------
def _no_window(rec: Recording, span: int, window_s: float) -> DataError:
    lengths = [p.signal.shape[1] for p in rec.segments]
    longest = max(lengths, default=0)
    what = (
        f"the input {rec.record_id} is {longest / rec.fs:g} s long ({longest} samples at {rec.fs:g} Hz)"
        if len(lengths) == 1
        else f"the input {rec.record_id} has {len(lengths)} segments between gaps, the longest {longest / rec.fs:g} s "
        f"({longest} samples at {rec.fs:g} Hz)"
    )
    return DataError(
        f"{what}; one window of the model is {window_s:g} s ({span} samples at this rate). Windows are never "
        "padded nor span a gap. Fix: a recording of at least one window without a gap"
    )


def cut_windows(rec: Recording, *, window_s: float, context_length: int, hop_s: float | None) -> Cut:
    """The windows of every segment at least one window long, resampled to the model's context; never padded."""
    span = int(round(window_s * rec.fs))
    hop = span if hop_s is None else int(round(hop_s * rec.fs))
    if hop < 1:
        raise ConfigError(
            f"predict.hop_s={hop_s} is less than one sample at {rec.fs:g} Hz. Fix: a positive hop_s "
            "or null (no overlap)"
        )
    segs, starts, index, tail, short = [], [], [], 0, []
    for k, piece in enumerate(rec.segments):
        length = piece.signal.shape[1]
        if length < span:
            short.append(length)
            continue
        first = np.arange(0, length - span + 1, hop)
        tail += length - (first[-1] + span)
        segs += [piece.signal[:, s : s + span] for s in first]
        starts.append(piece.start_s + first / rec.fs)
        index.append(np.full(len(first), k))
    if not segs:
        raise _no_window(rec, span, window_s)
    notes = []
    if short:
        notes.append(
            f"{len(short)} segment(s) shorter than a window ({window_s:g} s) not scored: {sum(short) / rec.fs:.3g} s "
            "in all"
        )
    windows = np.stack(segs)  # [N, C, span]
    up, down = Fraction(context_length, span).as_integer_ratio()
    if (up, down) != (1, 1):
        windows = resample_poly(windows, up, down, axis=2, padtype="line")
    rest = f"; the last {tail / rec.fs:.3g} s after them not scored" if tail else ""
    if tail and len(rec.segments) > 1:
        rest = f"; {tail / rec.fs:.3g} s after the last window of the segments not scored"
    notes.append(
        f"{len(segs)} window(s) of {window_s:g} s ({span} samples at {rec.fs:g} Hz, resampled to {context_length})"
        + rest
    )
    return Cut(windows.astype(np.float32), np.concatenate(starts), np.concatenate(index), notes)
