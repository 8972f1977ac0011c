"""A recording's clock: the unit of its time stamps, its rate, and the uniform pieces the model can read.

Devices stamp samples with epoch milliseconds, seconds since start, or ISO date-times, and their clocks jitter,
deliver samples in bursts and stop. The model needs uniform samples at a known rate, so:

- the unit (`predict.time_unit`: s, ms, us, datetime) is taken as given, or detected where only one reading is
  possible: ISO 8601 date-times (or times of day); numbers whose median step gives a plausible PPG rate
  (PLAUSIBLE_HZ) in one unit only; among several, the one whose magnitude is an epoch time (2000..2100). Anything
  else is a one-line error naming `predict.time_unit=`;
- stamps that do not advance (a repeat, a step back) are dropped and counted; over MAX_DROPPED of them the file is
  refused (it is not in time order: sorting it, or ignoring its clock with `predict.fs`, is the user's call);
- the rate is the median step, refined as the mean of the steps within half of it either side (so stamps rounded to
  whole milliseconds give 128 Hz, not the 125 Hz of their 8 ms median);
- a step longer than one model window is a gap: the recording splits there, and no window spans it. Shorter
  irregularities (jitter, bursts, a few missing samples) are linearly interpolated onto a uniform grid at the
  rate, and reported: the step's spread, its longest, the steps far from the median;
- missing values (NaN, or text where a number should be) are gaps whatever their length: never interpolated,
  so no window holds a value that the device did not give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttm_experiments.config.schema import TimeUnit
from ttm_experiments.errors import ConfigError, DataError

SCALE = {TimeUnit.s: 1.0, TimeUnit.ms: 1e-3, TimeUnit.us: 1e-6}  # seconds per count
PLAUSIBLE_HZ = (1.0, 5000.0)  # PPG rates: a unit is detected when only it puts the median step in this band
EPOCH_S = (946_684_800.0, 4_102_444_800.0)  # 2000-01-01 .. 2100-01-01, seconds since 1970
MAX_DROPPED = 0.01  # stamps that do not advance: dropped up to this share of the rows, refused above
NORMAL_STEP = (0.5, 1.5)  # steps within these multiples of the median refine the rate
SNAP = 1e-3  # an estimated rate this close (relative) to a whole number of Hz is that number
FS_AGREE = 0.02  # predict.fs and the clock's rate agree within this (relative)


@dataclass
class Piece:
    """A run of samples without a gap, uniform at the recording's rate."""

    signal: np.ndarray  # float64 [channels, samples]
    start_s: float  # seconds from the recording's first sample


@dataclass
class Gap:
    start_s: float
    duration_s: float
    why: str  # "clock" (a step longer than a window) or "missing" (NaN values)


def fmt_hz(hz: float) -> str:
    return f"{hz / 1e3:.4g} kHz" if hz >= 1e3 else f"{hz:.4g} Hz"


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _median_step(counts: np.ndarray, key: str) -> float:
    steps = np.diff(counts[np.isfinite(counts)])
    steps = steps[steps > 0]
    if not len(steps):
        raise DataError(f"{key}: the clock never advances (every stamp equal or going back). Fix: the time column")
    return float(np.median(steps))


def _detect_unit(counts: np.ndarray, key: str) -> tuple[TimeUnit, str]:
    step = _median_step(counts, key)
    rates = {u: 1.0 / (step * scale) for u, scale in SCALE.items()}
    plausible = [u for u, hz in rates.items() if PLAUSIBLE_HZ[0] <= hz <= PLAUSIBLE_HZ[1]]
    first = float(counts[np.isfinite(counts)][0])
    epoch = [u for u in plausible if EPOCH_S[0] <= first * SCALE[u] <= EPOCH_S[1]]
    readings = ", ".join(f"{fmt_hz(hz)} in {u.value}" for u, hz in rates.items())
    if len(plausible) == 1:
        return plausible[0], f"detected: its median step {step:g} is {readings}"
    if len(epoch) == 1:
        return epoch[0], f"detected: its median step {step:g} is {readings}; its magnitude is epoch {epoch[0].value}"
    if not plausible:
        raise DataError(
            f"{key}: its median step {step:g} is {readings}: no PPG rate ({PLAUSIBLE_HZ[0]:g} Hz..{PLAUSIBLE_HZ[1]:g} "
            "Hz) in any unit of predict.time_unit. Fix: predict.time_unit=<s, ms or us> if the rate is right in one, "
            "else predict.fs=<Hz> without predict.time_column (the clock ignored)"
        )
    raise ConfigError(
        f"{key}: cannot tell the unit of its clock: its median step {step:g} is {readings}. "
        f"Fix: predict.time_unit={plausible[0].value} (or {', '.join(u.value for u in plausible[1:])})"
    )


def _datetimes(text: np.ndarray) -> np.ndarray | None:
    """Seconds (float64, NaN where unreadable) of ISO 8601 date-times or times of day; None if most are neither."""
    import pandas as pd

    series = pd.Series(text, dtype=str).str.strip()
    stamps = pd.to_datetime(series, format="ISO8601", errors="coerce", utc=True)
    if stamps.notna().mean() >= 0.5:
        first = stamps[stamps.notna()].iloc[0]
        return (stamps - first).dt.total_seconds().to_numpy(dtype=np.float64)
    days = pd.to_timedelta(series, errors="coerce")
    if days.notna().mean() >= 0.5:
        return days.dt.total_seconds().to_numpy(dtype=np.float64)
    return None


def clock_seconds(numbers: np.ndarray, text: np.ndarray, unit: TimeUnit | None, key: str) -> tuple[np.ndarray, str]:
    """Seconds of each row's stamp from the first (NaN where it has none), and how the unit was decided."""
    numeric = np.isfinite(numbers).mean() >= 0.5
    if not numeric:
        seconds = _datetimes(text)
        if seconds is None:
            sample = next((str(t) for t in text if str(t).strip()), "")
            raise DataError(
                f"{key}: its stamps are neither numbers nor ISO 8601 date-times (e.g. {sample!r}). "
                "Fix: predict.time_column=<the column of time stamps>, or predict.fs=<Hz> without a time column"
            )
        if unit not in (None, TimeUnit.datetime):
            raise ConfigError(
                f"{key} holds date-times, not counts of {unit.value}. "
                "Fix: predict.time_unit=datetime (or leave it unset)"
            )
        return seconds, "ISO 8601 date-times"
    if unit == TimeUnit.datetime:
        raise ConfigError(
            f"{key} holds numbers, not date-times (e.g. {numbers[np.isfinite(numbers)][0]:g}). "
            "Fix: predict.time_unit=s, ms or us (or leave it unset to detect it)"
        )
    how = "given"
    if unit is None:
        unit, how = _detect_unit(numbers, key)
    origin = numbers[np.isfinite(numbers)][0]
    if EPOCH_S[0] <= origin * SCALE[unit] <= EPOCH_S[1]:
        how += f"; starts {np.datetime64(int(origin * SCALE[unit] * 1e3), 'ms')} UTC"
    return (numbers - origin) * SCALE[unit], f"{unit.value} ({how})"


def advancing(seconds: np.ndarray, key: str) -> tuple[np.ndarray, str | None]:
    """The rows whose stamp advances past every earlier one; a note of those dropped, or an error above MAX_DROPPED."""
    stamped = np.isfinite(seconds)
    t = seconds[stamped]
    keep_stamped = np.ones(len(t), dtype=bool)
    before = np.maximum.accumulate(t)[:-1]
    keep_stamped[1:] = t[1:] > before
    repeats, back = int(np.sum(t[1:] == before)), int(np.sum(t[1:] < before))
    dropped = repeats + back
    if dropped > MAX_DROPPED * len(t):
        span = float(t.max() - t.min())
        average = (
            f" (these {len(t)} stamps span {fmt_s(span)}: {fmt_hz((len(t) - 1) / span)} on average)" if span else ""
        )
        raise DataError(
            f"{key}: {dropped} of {len(t)} stamps ({dropped / len(t):.1%}) do not advance ({repeats} repeat an "
            f"earlier stamp, {back} go back in time): the rows are not in time order, or samples share one stamp per "
            "packet. Fix: sort the file by its time column, or predict.fs=<Hz> without predict.time_column "
            f"(the clock ignored){average}"
        )
    keep = np.zeros(len(seconds), dtype=bool)
    keep[np.flatnonzero(stamped)[keep_stamped]] = True
    notes = []
    if dropped:
        notes.append(f"{dropped} stamp(s) that do not advance dropped ({repeats} repeat, {back} go back)")
    if (~stamped).any():
        notes.append(f"{int((~stamped).sum())} row(s) without a readable stamp dropped")
    return keep, "; ".join(notes) or None


def clock_rate(seconds: np.ndarray, gap_s: float) -> tuple[float, float]:
    """(rate in Hz, median step in s) of advancing stamps, from the steps shorter than a gap."""
    steps = np.diff(seconds)
    steps = steps[steps <= gap_s]
    if not len(steps):
        raise DataError("the clock has no two samples closer than one model window. Fix: a recording with a clock")
    median = float(np.median(steps))
    normal = steps[(steps >= NORMAL_STEP[0] * median) & (steps <= NORMAL_STEP[1] * median)]
    fs = 1.0 / float(np.mean(normal))
    if abs(fs - round(fs)) <= SNAP * fs:
        fs = float(round(fs))
    return fs, median


def irregularity(seconds: np.ndarray, finite: np.ndarray, gap_s: float) -> str:
    """How irregular the clock is within the pieces: spread and extremes of its steps."""
    steps = np.diff(seconds)
    inside = (steps <= gap_s) & finite[1:] & finite[:-1]
    steps = steps[inside]
    if not len(steps):
        return "no two consecutive samples"
    if np.ptp(steps) <= 1e-9 * steps.max():
        return f"regular: every step {fmt_s(float(steps[0]))}"
    median = float(np.median(steps))
    slow = int(np.sum(steps > NORMAL_STEP[1] * median))
    fast = int(np.sum(steps < NORMAL_STEP[0] * median))
    return (
        f"irregular: step sd {np.std(steps) / median:.1%} of the median, longest {fmt_s(float(steps.max()))}, "
        f"{slow} step(s) over {NORMAL_STEP[1]:g}x the median, {fast} under {NORMAL_STEP[0]:g}x"
    )


def _runs(finite: np.ndarray, big_step_before: np.ndarray) -> list[np.ndarray]:
    """Sample indexes of each run between gaps: a missing sample, or a step longer than a window before it."""
    starts = finite.copy()
    starts[1:] &= ~finite[:-1] | big_step_before[1:]
    ids = np.where(finite, np.cumsum(starts), 0)
    idx = np.flatnonzero(ids)
    return np.split(idx, np.flatnonzero(np.diff(ids[idx])) + 1) if len(idx) else []


def _gaps(seconds: np.ndarray, runs: list[np.ndarray]) -> list[Gap]:
    """Between consecutive runs: the time from the last sample of one to the first of the next."""
    return [
        Gap(float(seconds[a[-1]]), float(seconds[b[0]] - seconds[a[-1]]), "missing" if b[0] > a[-1] + 1 else "clock")
        for a, b in zip(runs, runs[1:])
    ]


def uniform_pieces(values: np.ndarray, fs: float) -> tuple[list[Piece], list[Gap]]:
    """A uniformly sampled signal [C, n] cut at its missing values (NaN in any channel)."""
    finite = np.isfinite(values).all(axis=0)
    runs = _runs(finite, np.zeros(len(finite), dtype=bool))
    seconds = np.arange(values.shape[1]) / fs
    return [Piece(values[:, r[0] : r[-1] + 1], float(seconds[r[0]])) for r in runs], _gaps(seconds, runs)


def gridded_pieces(values: np.ndarray, seconds: np.ndarray, fs: float, gap_s: float) -> tuple[list[Piece], list[Gap]]:
    """Stamped samples [C, n] (advancing `seconds`) cut at gaps, each piece linearly interpolated onto t0 + k / fs."""
    finite = np.isfinite(values).all(axis=0)
    big = np.zeros(len(finite), dtype=bool)
    big[1:] = np.diff(seconds) > gap_s
    runs = _runs(finite, big)
    pieces = []
    for r in runs:
        t, x = seconds[r], values[:, r]
        grid = t[0] + np.arange(int(np.floor((t[-1] - t[0]) * fs + 1e-9)) + 1) / fs
        if len(grid) == len(t) and np.allclose(grid, t, rtol=0, atol=1e-6 / fs):  # already uniform: the samples
            pieces.append(Piece(x.copy(), float(t[0])))
            continue
        pieces.append(Piece(np.stack([np.interp(grid, t, row) for row in x]), float(t[0])))
    return pieces, _gaps(seconds, runs)


def rate_from_clock(clock_fs: float, median: float, given: float | None, key: str) -> float:
    """The clock's rate, or predict.fs when both are given and agree; an error when they do not."""
    if given is None:
        return clock_fs
    if abs(given - clock_fs) > FS_AGREE * clock_fs:
        raise ConfigError(
            f"predict.fs={given:g} but the clock of {key} runs at {clock_fs:g} Hz (median step {fmt_s(median)}). "
            "Fix: drop predict.fs (the clock gives the rate), or drop predict.time_column (predict.fs is used and "
            "the clock ignored)"
        )
    return float(given)


def describe_gaps(gaps: list[Gap], gap_s: float, kept: int) -> str | None:
    if not gaps:
        return None
    clock = [g for g in gaps if g.why == "clock"]
    missing = [g for g in gaps if g.why == "missing"]
    parts = []
    if clock:
        parts.append(f"{len(clock)} clock step(s) longer than a window ({gap_s:g} s)")
    if missing:
        parts.append(f"{len(missing)} run(s) of missing values (NaN or not a number; never interpolated)")
    where = ", ".join(f"{fmt_s(g.duration_s)} at {g.start_s:.1f} s" for g in gaps[:5])
    more = f" and {len(gaps) - 5} more" if len(gaps) > 5 else ""
    return (
        f"gaps: {' and '.join(parts)}: {where}{more}; the recording is split there into {len(gaps) + 1} "
        f"segments ({kept} at least one window long); no window spans a gap"
    )
