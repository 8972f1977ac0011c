"""BUT-PPG v2 (PhysioNet ``butppg``, CC BY 4.0): smartphone PPG, 10 s records, expert quality labels.

Reads the PhysioNet download as it is (LAYOUT). Each record gives ``duration_s`` windows of
``dataset.ppg_channels``, resampled to ``window_length`` samples (``padtype="line"``: no ringing at the edges);
subject = the first three digits of the record ID. Of the ``Motion`` codes (MOTION_CLASSES) only 0 = rest and
1 = pressure are confirmed by the database. Release-1 records (100001..111004) have a transposed header, repaired
by ORIENTATION_RULE. Nothing is dropped silently: every excluded record or window is counted by reason.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ttm_experiments.config.schema import MissingRecords, NonFinite
from ttm_experiments.data.base import WindowSet
from ttm_experiments.data.cache import BuildInfo, Cached, CacheWriter, cache_key, load_or_build, log_report, source_root
from ttm_experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Part of the cache key: bump whenever the windows for the same sources and settings change.
LOADER_VERSION = "1"

ANNOTATION_FILE = "quality-hr-ann.csv"
SUBJECT_FILE = "subject-info.csv"
LAYOUT = (
    f"<root>/{ANNOTATION_FILE} (ID,Quality,HR), <root>/{SUBJECT_FILE} (ID,Gender,Age [years],...,"
    "Ear/finger,Motion,...; one row per record), and one folder per record: <root>/<ID>/<ID>_PPG.hea + "
    "<ID>_PPG.dat (WFDB, R/G/B at 30 Hz); the PhysioNet butppg v2 download as it is"
)

QUALITY_CLASSES = ("poor", "good")
MOTION_CLASSES = ("rest", "pressure", "finger_motion", "walking", "coughing", "laughing", "light", "talking")
TASKS = {"quality": QUALITY_CLASSES, "motion": MOTION_CLASSES}
COLOURS = ("R", "G", "B")

SITE_FINGER, SITE_EAR, SITE_UNKNOWN = 0, 1, -1
SOURCE_SITE_CODES = {0: SITE_EAR, 1: SITE_FINGER}
SITE_WORDS = {"ear": SITE_EAR, "e": SITE_EAR, "finger": SITE_FINGER, "f": SITE_FINGER}

ORIENTATION_RULE = (
    "transposed: n_sig > sig_len and sig_len <= 3 (p_signal is [channels, time]); "
    "interleaved: n_sig == 1 and sig_len == 3 * fs * duration_s (R,G,B frames)"
)

_NA = {"", "nan", "na", "n/a", "none", "null", "-"}
_EXAMPLES = 8  # example IDs kept per exclusion reason


@dataclass(frozen=True)
class Settings:
    """The loader's own settings: the download's folder and what shapes the windows (the cache key holds all
    but `root`). Checked when built; built from a dataset config in one place, `data/prepare.py`."""

    root: str | None  # the folder that holds quality-hr-ann.csv (dataset.root)
    task: str = "quality"  # a key of TASKS
    colours: tuple[str, ...] = ("R",)  # camera channels (dataset.ppg_channels)
    window_length: int = 1024
    duration_s: float = 10.0
    nonfinite: NonFinite = NonFinite.error
    missing_records: MissingRecords = MissingRecords.error

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"dataset.task={self.task!r} is not a BUT-PPG task: choose one of {sorted(TASKS)}")
        colours = tuple(str(c).strip().upper() for c in self.colours)
        bad = [c for c in colours if c not in COLOURS]
        if bad or not colours or len(set(colours)) != len(colours):
            raise ConfigError(
                f"dataset.ppg_channels={list(self.colours)} is invalid: give distinct camera "
                f"channels out of {list(COLOURS)}, e.g. dataset.ppg_channels=[R] or [R,G,B]"
            )
        object.__setattr__(self, "colours", colours)
        object.__setattr__(self, "window_length", int(self.window_length))
        object.__setattr__(self, "duration_s", float(self.duration_s))
        for key, kind in (("nonfinite", NonFinite), ("missing_records", MissingRecords)):
            try:
                object.__setattr__(self, key, kind(getattr(self, key)))
            except ValueError:
                raise ConfigError(
                    f"dataset.{key}={getattr(self, key)!r} must be one of {[m.value for m in kind]}"
                ) from None

    def cache_settings(self) -> dict:
        """What shapes the windows besides the source files: the settings part of the cache key."""
        return {
            "task": self.task,
            "colours": self.colours,
            "window_length": self.window_length,
            "duration_s": self.duration_s,
            "nonfinite": self.nonfinite.value,
            "missing_records": self.missing_records.value,
        }


def load_butppg(s: Settings, *, cache_dir: Path) -> Cached:
    """Windows, labels, subjects and meta of a BUT-PPG v2 download, through the cache; see the module doc."""
    root = source_root(s.root, "butppg", [ANNOTATION_FILE, SUBJECT_FILE], LAYOUT)
    sources = [root / ANNOTATION_FILE, root / SUBJECT_FILE, *root.glob("*/*_PPG.hea"), *root.glob("*/*_PPG.dat")]
    key, manifest = cache_key(
        loader="butppg", version=LOADER_VERSION, settings=s.cache_settings(), root=root, files=sources
    )
    result = load_or_build(
        cache_dir=cache_dir, loader="butppg", key=key, manifest=manifest, build=lambda w: _build(root, s, w)
    )
    log_report("butppg", result.report)
    return result


def _read_table(path: Path, required: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """ID -> row (column -> stripped text) of a BUT-PPG CSV (UTF-8 with or without BOM)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path} cannot be read as CSV: {err}. Expected layout: {LAYOUT}") from err
    if not rows:
        raise DataError(f"{path} is empty. Expected layout: {LAYOUT}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing}; its columns are {header}. Expected layout: {LAYOUT}")
    table: dict[str, dict[str, str]] = {}
    bad_ids, duplicates = [], []
    for row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        record = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
        rid = record["ID"]
        if rid.isdigit() and len(rid) < 6:
            rid = rid.zfill(6)
        if not re.fullmatch(r"\d{6}", rid):
            bad_ids.append(record["ID"])
            continue
        if rid in table:
            duplicates.append(rid)
        table[rid] = record
    if bad_ids:
        raise DataError(
            f"{path}: {len(bad_ids)} row(s) have an ID that is not a 6-digit BUT-PPG record ID, e.g. {bad_ids[:5]}"
        )
    if duplicates:
        raise DataError(f"{path}: record ID(s) listed twice: {sorted(set(duplicates))[:10]}")
    return table


def _number(text: str) -> float | None:
    if text.strip().lower() in _NA:
        return None
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        return math.nan  # present but not a number: reported as invalid by the caller
    return None if math.isnan(value) else value


def _codes(
    table: dict[str, dict[str, str]], column: str, allowed: range, path: Path, strict: bool = True
) -> dict[str, int | None]:
    """ID -> integer code of `column` (None when empty). Values outside `allowed` stop the load when `strict`
    (the column is the task's label); otherwise they become None (a column kept only as metadata)."""
    out: dict[str, int | None] = {}
    invalid = Counter()
    for rid, row in table.items():
        value = _number(row.get(column, ""))
        if value is None:
            out[rid] = None
        elif math.isnan(value) or value != int(value) or int(value) not in allowed:
            invalid[row[column]] += 1
            out[rid] = None
        else:
            out[rid] = int(value)
    if invalid and not strict:
        log.warning(
            "%s: column %r holds values outside %d..%d %s; kept as -1 in meta (not the task's label)",
            path,
            column,
            allowed.start,
            allowed.stop - 1,
            dict(invalid.most_common(5)),
        )
    elif invalid:
        raise DataError(
            f"{path}: column {column!r} must hold integer codes {allowed.start}..{allowed.stop - 1}; "
            f"found {dict(invalid.most_common(10))}"
        )
    return out


def _site(text: str) -> int:
    word = text.strip().lower()
    if word in SITE_WORDS:
        return SITE_WORDS[word]
    value = _number(text)
    if value is not None and not math.isnan(value) and int(value) in SOURCE_SITE_CODES:
        return SOURCE_SITE_CODES[int(value)]
    return SITE_UNKNOWN


def read_record(base: Path) -> tuple[np.ndarray, list[str], float, int, int]:
    """``wfdb.rdrecord`` of one PPG record: p_signal [sig_len, n_sig], names, fs, n_sig, sig_len as declared."""
    import wfdb

    record = wfdb.rdrecord(str(base))
    return (
        np.asarray(record.p_signal, dtype=np.float64),
        list(record.sig_name or []),
        float(record.fs),
        int(record.n_sig),
        int(record.sig_len),
    )


def orient(
    p_signal: np.ndarray, names: list[str], n_sig: int, sig_len: int, expected: int
) -> tuple[np.ndarray, list[str | None], str]:
    """A record as [time, channels], each channel's colour (None when unknown) and how it was repaired:
    ``"transposed"`` or ``"interleaved"`` (the release-1 header defects, ORIENTATION_RULE) or ``"ok"``."""
    if n_sig > sig_len and sig_len <= 3:
        x = p_signal.T
        return x, (list(COLOURS) if x.shape[1] == 3 else [None] * x.shape[1]), "transposed"
    if n_sig == 1 and sig_len == 3 * expected:
        return p_signal.reshape(expected, 3), list(COLOURS), "interleaved"
    colours = [_colour(n) for n in names]
    if len(colours) == 3 and not any(colours):
        colours = list(COLOURS)  # three unnamed channels: the database's R, G, B order
    return p_signal, colours, "ok"


def _colour(name: str) -> str | None:
    n = name.strip().upper()
    for word, colour in (("RED", "R"), ("GREEN", "G"), ("BLUE", "B")):
        if word in n:
            return colour
    last = re.split(r"[^A-Z0-9]+", n)[-1] if n else ""
    return last if last in COLOURS else None


def _select(x: np.ndarray, colours: list[str | None], wanted: tuple[str, ...]) -> tuple[np.ndarray | None, bool]:
    """The wanted channels [time, len(wanted)] (None when absent) and whether a one-channel record stood in."""
    if all(c in colours for c in wanted):
        return x[:, [colours.index(c) for c in wanted]], False
    if x.shape[1] == 1 and colours[0] is None and len(wanted) == 1:
        return x, True
    return None, False


class _Exclusions:
    """Excluded records (or windows) counted per reason, with a few example IDs each."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def add(self, reason: str, rid: str, n: int = 1) -> None:
        self.counts[reason] += n
        if len(self.examples[reason]) < _EXAMPLES:
            self.examples[reason].append(rid)


@dataclass
class _Tables:
    """The two CSVs, by record ID, and the integer codes read from them."""

    ann: dict[str, dict[str, str]]
    info: dict[str, dict[str, str]]
    quality: dict[str, int | None]
    motion: dict[str, int | None]

    def labels(self, task: str) -> dict[str, int | None]:
        return self.quality if task == "quality" else self.motion


@dataclass
class _Collected:
    """What the record loop gathers: resampled windows per record, one row per window, the repair counts."""

    windows: list[np.ndarray] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    repaired: Counter = field(default_factory=Counter)
    nonfinite_ids: list[str] = field(default_factory=list)
    tails: int = 0


def _build(root: Path, s: Settings, writer: CacheWriter) -> BuildInfo:
    tables = _read_tables(root, s.task)
    ids = sorted(set(tables.ann) | set(tables.info))
    excluded, got = _Exclusions(), _Collected()
    for rid in _present_records(root, s, labels=tables.labels(s.task), ids=ids, excluded=excluded):
        _add_record(got, root=root, rid=rid, s=s, excluded=excluded)
    if got.nonfinite_ids and s.nonfinite == NonFinite.error:
        raise DataError(
            f"{len(got.nonfinite_ids)} BUT-PPG record(s) hold NaN/Inf samples, e.g. {got.nonfinite_ids[:8]}. "
            "Fix: dataset.nonfinite=drop to exclude their windows (they are counted in the report)."
        )
    if not got.windows:
        raise DataError(
            f"no usable BUT-PPG record under {root}: excluded {dict(excluded.counts)}. Expected layout: {LAYOUT}"
        )
    windows = _window_set(tables, got, s)
    writer.save_windows(windows)
    report = _report(root, s, ids=ids, windows=windows, got=got, excluded=excluded)
    _check_sites(report["sites"])
    return BuildInfo(TASKS[s.task], windows.fs, report)


def _read_tables(root: Path, task: str) -> _Tables:
    ann = _read_table(root / ANNOTATION_FILE, ("ID", "Quality", "HR"))
    info = _read_table(root / SUBJECT_FILE, ("ID", "Ear/finger", "Motion"))
    quality = _codes(ann, "Quality", range(2), root / ANNOTATION_FILE, strict=task == "quality")
    motion = _codes(info, "Motion", range(len(MOTION_CLASSES)), root / SUBJECT_FILE, strict=task == "motion")
    return _Tables(ann, info, quality, motion)


def _present_records(
    root: Path, s: Settings, *, labels: dict[str, int | None], ids: list[str], excluded: _Exclusions
) -> list[str]:
    """The labelled records whose folder exists; a missing folder stops the load or is skipped and counted."""
    labelled = []
    for rid in ids:
        if labels.get(rid) is None:
            excluded.add(f"no {s.task} label", rid)
        else:
            labelled.append(rid)
    missing = [rid for rid in labelled if not (root / rid / f"{rid}_PPG.hea").is_file()]
    if missing and s.missing_records == MissingRecords.error:
        raise DataError(
            f"{len(missing)} of {len(labelled)} annotated BUT-PPG records have no record folder, e.g. "
            f"{', '.join(str(root / r / f'{r}_PPG.hea') for r in missing[:3])}. Fix: point dataset.root at the "
            "folder that holds quality-hr-ann.csv and the record folders, complete the download, or "
            f"dataset.missing_records=skip to skip them (they are counted). Expected layout: {LAYOUT}"
        )
    for rid in missing:
        excluded.add("record folder missing", rid)
    return [rid for rid in labelled if rid not in set(missing)]


def _read_oriented(
    base: Path, *, rid: str, s: Settings, excluded: _Exclusions, got: _Collected
) -> tuple[np.ndarray, float, int, bool] | None:
    """One record as [time, asked channels], its rate, samples per window and whether it was repaired."""
    try:
        p_signal, names, fs, n_sig, sig_len = read_record(base)
    except Exception as err:  # wfdb raises many kinds; the record is counted and named, never lost silently
        excluded.add("unreadable", f"{rid} ({type(err).__name__}: {err})"[:200])
        return None
    expected = int(round(fs * s.duration_s))
    x, colours, kind = orient(p_signal, names, n_sig, sig_len, expected)
    if kind != "ok":
        got.repaired[kind] += 1
    x, single = _select(x, colours, s.colours)
    if x is None:
        excluded.add("lacks the asked channels", f"{rid} (has {colours})")
        return None
    if single:
        got.repaired["single_channel_used"] += 1
    return x, fs, expected, kind != "ok" or single


def _add_record(got: _Collected, *, root: Path, rid: str, s: Settings, excluded: _Exclusions) -> None:
    """Cut one record into consecutive windows of duration_s, resampled to window_length samples."""
    read = _read_oriented(root / rid / f"{rid}_PPG", rid=rid, s=s, excluded=excluded, got=got)
    if read is None:
        return
    x, fs, expected, repaired = read
    n_win = x.shape[0] // expected if expected > 0 else 0
    if n_win == 0:
        excluded.add(f"shorter than duration_s={s.duration_s:g} s", f"{rid} ({x.shape[0]} samples at {fs:g} Hz)")
        return
    if x.shape[0] % expected:
        got.tails += 1
    segs = x[: n_win * expected].T.reshape(x.shape[1], n_win, expected).transpose(1, 0, 2)  # [n_win, C, L]
    finite = np.isfinite(segs).all(axis=(1, 2))
    offsets = np.arange(n_win)
    if not finite.all():
        got.nonfinite_ids.append(rid)
        if s.nonfinite == NonFinite.drop:
            excluded.add("windows with NaN/Inf (dataset.nonfinite=drop)", rid, int((~finite).sum()))
            segs, offsets = segs[finite], offsets[finite]
    if len(segs) == 0:
        return
    up, down = Fraction(s.window_length, expected).as_integer_ratio()
    res = resample_poly(segs, up, down, axis=2, padtype="line") if (up, down) != (1, 1) else segs
    got.windows.append(res.astype(np.float32))
    got.rows.extend({"rid": rid, "fs": fs, "repaired": repaired, "offset": int(w)} for w in offsets)


def _window_set(t: _Tables, got: _Collected, s: Settings) -> WindowSet:
    rids = [r["rid"] for r in got.rows]
    hr_values = [_number(t.ann.get(r, {}).get("HR", "")) for r in rids]
    meta = {
        "record_id": np.array([int(r) for r in rids], dtype=np.int64),
        "site": np.array([_site(t.info.get(r, {}).get("Ear/finger", "")) for r in rids], dtype=np.int64),
        "hr": np.array([np.nan if v is None else v for v in hr_values], dtype=np.float64),
        "quality": np.array([-1 if t.quality.get(r) is None else t.quality[r] for r in rids], dtype=np.int64),
        "motion": np.array([-1 if t.motion.get(r) is None else t.motion[r] for r in rids], dtype=np.int64),
        "repaired": np.array([r["repaired"] for r in got.rows], dtype=bool),
        "window_index": np.array([r["offset"] for r in got.rows], dtype=np.int64),
    }
    labels = t.labels(s.task)
    return WindowSet(
        signals=np.concatenate(got.windows),
        labels=np.array([labels[r] for r in rids], dtype=np.int64),
        subjects=np.array([int(r[:3]) for r in rids], dtype=np.int64),
        class_names=TASKS[s.task],
        fs=s.window_length / s.duration_s,
        meta=meta,
    )


def _report(
    root: Path, s: Settings, *, ids: list[str], windows: WindowSet, got: _Collected, excluded: _Exclusions
) -> dict:
    """What was used, repaired and excluded (logged, and stored with the cache entry)."""
    folders = {p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(r"\d{6}", p.name)}
    return {
        "counts": {
            "records_listed": len(ids),
            "records_used": len({r["rid"] for r in got.rows}),
            "windows": len(windows),
            "subjects": int(len(np.unique(windows.subjects))),
            **{f"n_{name}": n for name, n in windows.class_counts().items()},
            "transposed_repaired": got.repaired["transposed"],
            "interleaved_repaired": got.repaired["interleaved"],
            "single_channel_used": got.repaired["single_channel_used"],
            "records_with_tail_discarded": got.tails,
            "folders_without_csv_row": len(folders - set(ids)),
        },
        "excluded": dict(excluded.counts),
        "examples": dict(excluded.examples),
        "sites": _site_summary(windows.meta["site"], windows.meta["quality"]),
        "notes": [
            f"task={s.task}, channels {list(s.colours)}, resampled {sorted({r['fs'] for r in got.rows})} Hz x "
            f"{s.duration_s:g} s -> {s.window_length} samples ({windows.fs:g} Hz) with scipy.signal.resample_poly",
            f"release-1 header rule: {ORIENTATION_RULE}",
        ],
    }


def _site_summary(site: np.ndarray, quality: np.ndarray) -> dict:
    out = {}
    for name, code in (("finger", SITE_FINGER), ("ear", SITE_EAR), ("unknown", SITE_UNKNOWN)):
        mask = site == code
        rated = mask & (quality >= 0)
        if mask.any():
            out[name] = {
                "windows": int(mask.sum()),
                "good_fraction": round(float((quality[rated] == 1).mean()), 4) if rated.any() else None,
            }
    return out


def _check_sites(sites: dict) -> None:
    finger, ear = sites.get("finger", {}).get("good_fraction"), sites.get("ear", {}).get("good_fraction")
    if finger is not None and ear is not None and ear > finger:
        log.warning(
            "butppg: ear records are rated good more often (%.2f) than finger records (%.2f); BUT-PPG's "
            "ear records are the worse ones, so the Ear/finger coding may be the other way round "
            "(SOURCE_SITE_CODES in ttm_experiments/data/butppg.py)",
            ear,
            finger,
        )
