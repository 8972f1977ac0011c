"""Raw recordings for `ttm-predict`: a CSV column, an .npz (`signal`), a WFDB record, cut into a model's windows.

A window spans the seconds the model was trained on (`window_s`, its `dataset.duration_s`): `window_s * fs`
samples of the input, resampled to the model's context with `scipy.signal.resample_poly` at the exact ratio and
`padtype="line"`, as the BUT-PPG and VitalDB loaders do. Nothing is padded: an input shorter than one window is
an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ttm_experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FS_RANGE = (1.0, 100_000.0)  # Hz; outside it a rate is a unit mistake (kHz for Hz, a period for a rate)


@dataclass
class Recording:
    signal: np.ndarray  # float64 [channels, samples]
    fs: float
    record_id: str


def check_fs(fs: float | None, where: str) -> float:
    if fs is None:
        raise ConfigError(f"{where} has no sampling rate. Fix: predict.fs=<Hz>, e.g. predict.fs=30")
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


def _read_csv(path: Path, column: str | None, fs: float | None) -> Recording:
    import pandas as pd

    table = pd.read_csv(path)
    if column is None or column not in table.columns:
        what = "predict.column is not set" if column is None else f"it has no column {column!r}"
        raise ConfigError(
            f"predict.input={path}: {what}; its columns are {list(table.columns)}. Fix: predict.column=<one of them>"
        )
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    return Recording(values[None, :], _rate(None, fs, f"predict.input={path}"), path.stem)


def _read_npz(path: Path, fs: float | None) -> Recording:
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
    return Recording(x if x.ndim == 2 else x[None, :], _rate(found, fs, f"predict.input={path}"), rid)


def _read_wfdb(base: Path, channels: list[str] | None, fs: float | None) -> Recording:
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
    return Recording(x, _rate(float(record.fs) if record.fs else None, fs, f"the WFDB record {base}"), base.name)


def read_recording(path: str, *, column: str | None, channels: list[str] | None, fs: float | None) -> Recording:
    """`predict.input`: `.csv`, `.npz`, or a WFDB record given without extension (`<path>.hea` beside it)."""
    p = Path(path).expanduser()
    if p.suffix.lower() == ".csv" and p.is_file():
        return _read_csv(p, column, fs)
    if p.suffix.lower() == ".npz" and p.is_file():
        return _read_npz(p, fs)
    base = p.with_suffix("") if p.suffix.lower() in (".hea", ".dat") else p
    if base.with_name(base.name + ".hea").is_file():
        return _read_wfdb(base, channels, fs)
    raise ConfigError(
        f"predict.input={path} is not a .csv file, an .npz file or a WFDB record (no {base}.hea). "
        "Fix: the path of one of those (a WFDB record without its extension)"
    )


def cut_windows(
    rec: Recording, *, window_s: float, context_length: int, hop_s: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Windows float32 [N, C, context] of `rec` and their start times in seconds; never padded."""
    span = int(round(window_s * rec.fs))
    hop = span if hop_s is None else int(round(hop_s * rec.fs))
    if hop < 1:
        raise ConfigError(
            f"predict.hop_s={hop_s} is less than one sample at {rec.fs:g} Hz. Fix: a positive hop_s "
            "or null (no overlap)"
        )
    length = rec.signal.shape[1]
    if length < span:
        raise DataError(
            f"the input {rec.record_id} is {length / rec.fs:g} s long ({length} samples at {rec.fs:g} Hz); "
            f"one window of the model is {window_s:g} s ({span} samples at this rate). Windows are never "
            "padded. Fix: a recording of at least one window"
        )
    starts = np.arange(0, length - span + 1, hop)
    tail = length - (starts[-1] + span)
    if tail:
        log.info(
            "%s: the last %d sample(s) (%.2f s) fill no window and are not scored", rec.record_id, tail, tail / rec.fs
        )
    segs = np.stack([rec.signal[:, s : s + span] for s in starts])  # [N, C, span]
    up, down = Fraction(context_length, span).as_integer_ratio()
    if (up, down) != (1, 1):
        segs = resample_poly(segs, up, down, axis=2, padtype="line")
    return segs.astype(np.float32), starts / rec.fs
