"""BUT-PPG v2 (PhysioNet ``butppg``, CC BY 4.0): smartphone PPG, 10 s records, expert quality labels.

Layout read (the PhysioNet download, unchanged)::

    <root>/quality-hr-ann.csv        ID,Quality,HR                     (UTF-8 with BOM)
    <root>/subject-info.csv          ID,Gender,Age [years],...,Ear/finger,Motion,...   (one row per record)
    <root>/100001/100001_PPG.hea     WFDB header: 3 signals (R, G, B camera channels), 30 Hz, 300 samples
    <root>/100001/100001_PPG.dat
    (<root>/100001/100001_ECG.*, _ACC.* are not read)

``ttm-train dataset=butppg dataset.root=/data/butppg`` gives one window per record (more when
``dataset.duration_s`` is shorter than a record): ``dataset.ppg_channels`` (R, G, B or several; the count must
equal ``dataset.channels``) resampled from the record's rate (30 Hz) to ``window_length / duration_s`` with
``scipy.signal.resample_poly`` (polyphase FIR with a Kaiser anti-aliasing window, ``padtype="line"`` so that
the record's edges do not ring; the ratio is exact, e.g. 300 -> 1024 samples is up 256 / down 75).

Decisions, documented here because the data's own documentation does not settle them:

- **Subject** = the first three digits of the record ID (PhysioNet's definition).
- **Labels**: ``dataset.task=quality`` (default): ``Quality`` of quality-hr-ann.csv, 0 = poor, 1 = good.
  ``dataset.task=motion``: ``Motion`` of subject-info.csv, an integer code 0..7. The names in
  MOTION_CLASSES are an assumption: the order of the recording conditions in the database's description
  (rest, then higher pressure on the camera, motion of the finger/ear on the camera, walking, coughing,
  laughing, changing ambient light, talking). Public code that reads the release confirms only that 0 is
  the resting condition and 1 the higher-pressure one. The integer codes are what the model learns; the
  names only label metrics (``acc/<name>``). With ``task=motion`` a code outside 0..7 stops the load with
  the codes found; with ``task=quality`` it only becomes -1 in ``meta["motion"]`` (logged).
- **Site** (``meta["site"]``: 0 finger, 1 ear, -1 unknown) from the ``Ear/finger`` column: the words
  ``ear``/``finger`` (or ``E``/``F``) are read as such; numeric codes as 0 = ear, 1 = finger (SOURCE_SITE_CODES,
  as public code for this release reads them). The report gives the good fraction per site: the ear must be
  the worse site (the database's description), and a warning says so when it is not, i.e. when the coding is
  the other way round.
- **Release-1 records with a transposed header** (100001..111004): the header declares one signal per
  *sample* and one or three samples per signal, so ``wfdb.rdrecord`` returns ``p_signal`` of shape (1, 300)
  (or (3, 300)) instead of (300, C). Rule (ORIENTATION_RULE): a PPG header with more signals than samples per
  signal and at most 3 samples per signal is transposed; it is repaired by transposing (three rows are R, G,
  B; one row is one PPG channel of unknown colour). A header that declares one signal of exactly 3 x
  (fs x duration) samples is read as R, G, B frames interleaved into one signal and repaired by reshaping.
  Both are counted in the report. A one-channel record (named no colour) is used when exactly one channel
  is asked for (counted as ``single_channel_used``) and excluded, counted, when more are.
- **Never silently dropped**: records without the task's label, unreadable, without the asked channels or
  shorter than ``duration_s`` are excluded and counted by reason (log and ``report["excluded"]``, with
  example IDs). Records longer than ``duration_s`` are cut into consecutive windows and the leftover tail is
  counted. Windows holding NaN follow ``dataset.nonfinite``: ``error`` (default) stops with the record IDs,
  ``drop`` excludes and counts them.
- **An annotated record whose folder is missing**: ``dataset.missing_records=error`` (default) stops before
  reading anything, with the count and the first IDs (a wrong root or an incomplete download is the usual
  cause); ``dataset.missing_records=skip`` skips them and counts them.
- Record folders that no CSV row mentions are not read; their count is in the report.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ttm_experiments.data.base import WindowSet
from ttm_experiments.data.cache import BuildInfo, Cached, CacheWriter, cache_key, load_or_build, log_report, source_root
from ttm_experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Part of the cache key: bump whenever the windows for the same sources and settings change.
LOADER_VERSION = "1"

ANNOTATION_FILE = "quality-hr-ann.csv"
SUBJECT_FILE = "subject-info.csv"
LAYOUT = (f"<root>/{ANNOTATION_FILE} (ID,Quality,HR), <root>/{SUBJECT_FILE} (ID,Gender,Age [years],...,"
          "Ear/finger,Motion,...; one row per record), and one folder per record: <root>/<ID>/<ID>_PPG.hea + "
          "<ID>_PPG.dat (WFDB, R/G/B at 30 Hz); the PhysioNet butppg v2 download as it is")

QUALITY_CLASSES = ("poor", "good")
MOTION_CLASSES = ("rest", "pressure", "finger_motion", "walking", "coughing", "laughing", "light", "talking")
TASKS = {"quality": QUALITY_CLASSES, "motion": MOTION_CLASSES}
COLOURS = ("R", "G", "B")

SITE_FINGER, SITE_EAR, SITE_UNKNOWN = 0, 1, -1
SOURCE_SITE_CODES = {0: SITE_EAR, 1: SITE_FINGER}
SITE_WORDS = {"ear": SITE_EAR, "e": SITE_EAR, "finger": SITE_FINGER, "f": SITE_FINGER}

ORIENTATION_RULE = ("transposed: n_sig > sig_len and sig_len <= 3 (p_signal is [channels, time]); "
                    "interleaved: n_sig == 1 and sig_len == 3 * fs * duration_s (R,G,B frames)")

_NA = {"", "nan", "na", "n/a", "none", "null", "-"}
_EXAMPLES = 8  # example IDs kept per exclusion reason


@dataclass(frozen=True)
class Settings:
    task: str
    colours: tuple[str, ...]
    window_length: int
    duration_s: float
    nonfinite: str
    missing_records: str

    def as_dict(self) -> dict:
        return {"task": self.task, "colours": list(self.colours), "window_length": self.window_length,
                "duration_s": float(self.duration_s), "nonfinite": self.nonfinite,
                "missing_records": self.missing_records}


def settings(spec) -> Settings:
    """The loader's settings from a DatasetSpec, checked; ConfigError names the key and the fix."""
    if spec.task not in TASKS:
        raise ConfigError(f"dataset.task={spec.task!r} is not a BUT-PPG task: choose one of {sorted(TASKS)}")
    colours = tuple(str(c).strip().upper() for c in spec.ppg_channels)
    bad = [c for c in colours if c not in COLOURS]
    if bad or not colours or len(set(colours)) != len(colours):
        raise ConfigError(f"dataset.ppg_channels={list(spec.ppg_channels)} is invalid: give distinct camera "
                          f"channels out of {list(COLOURS)}, e.g. dataset.ppg_channels=[R] or [R,G,B]")
    if len(colours) != spec.channels:
        raise ConfigError(f"dataset.ppg_channels={list(colours)} selects {len(colours)} channel(s) but "
                          f"dataset.channels={spec.channels}: they must agree (the model's input channels). "
                          f"Fix: dataset.channels={len(colours)}")
    if spec.missing_records not in ("error", "skip"):
        raise ConfigError(f"dataset.missing_records={spec.missing_records!r} must be 'error' or 'skip'")
    if spec.nonfinite not in ("error", "drop"):
        raise ConfigError(f"dataset.nonfinite={spec.nonfinite!r} must be 'error' or 'drop'")
    return Settings(spec.task, colours, int(spec.window_length), float(spec.duration_s), spec.nonfinite,
                    spec.missing_records)


def load(spec, cache_dir: Path) -> WindowSet:
    """The `dataset=butppg` entry of the LOADERS registry."""
    return load_butppg(spec, cache_dir).windows


def load_butppg(spec, cache_dir: Path) -> Cached:
    """Windows, labels, subjects and meta of a BUT-PPG v2 download, through the cache; see the module doc."""
    s = settings(spec)
    root = source_root(spec.root, "butppg", [ANNOTATION_FILE, SUBJECT_FILE], LAYOUT)
    sources = [root / ANNOTATION_FILE, root / SUBJECT_FILE, *root.glob("*/*_PPG.hea"), *root.glob("*/*_PPG.dat")]
    key, manifest = cache_key("butppg", LOADER_VERSION, s.as_dict(), root, sources)
    result = load_or_build(Path(cache_dir), "butppg", key, manifest, lambda w: _build(root, s, w))
    log_report("butppg", result.report)
    return result


# --------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------


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
        raise DataError(f"{path}: {len(bad_ids)} row(s) have an ID that is not a 6-digit BUT-PPG record ID, "
                        f"e.g. {bad_ids[:5]}")
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


def _codes(table: dict[str, dict[str, str]], column: str, allowed: range, path: Path, strict: bool = True
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
        log.warning("%s: column %r holds values outside %d..%d %s; kept as -1 in meta (not the task's label)",
                    path, column, allowed.start, allowed.stop - 1, dict(invalid.most_common(5)))
    elif invalid:
        raise DataError(f"{path}: column {column!r} must hold integer codes {allowed.start}..{allowed.stop - 1}; "
                        f"found {dict(invalid.most_common(10))}")
    return out


def _site(text: str) -> int:
    word = text.strip().lower()
    if word in SITE_WORDS:
        return SITE_WORDS[word]
    value = _number(text)
    if value is not None and not math.isnan(value) and int(value) in SOURCE_SITE_CODES:
        return SOURCE_SITE_CODES[int(value)]
    return SITE_UNKNOWN


# --------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------


def read_record(base: Path) -> tuple[np.ndarray, list[str], float, int, int]:
    """``wfdb.rdrecord`` of one PPG record: p_signal [sig_len, n_sig], names, fs, n_sig, sig_len as declared."""
    import wfdb

    record = wfdb.rdrecord(str(base))
    return np.asarray(record.p_signal, dtype=np.float64), list(record.sig_name or []), float(record.fs), \
        int(record.n_sig), int(record.sig_len)


def orient(p_signal: np.ndarray, names: list[str], n_sig: int, sig_len: int, expected: int
           ) -> tuple[np.ndarray, list[str | None], str]:
    """A record as [time, channels] with each channel's colour (None when unknown) and how it was repaired.

    See ORIENTATION_RULE: ``"transposed"`` and ``"interleaved"`` are the release-1 header defects; ``"ok"``
    is a record read as stored.
    """
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


# --------------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------------


def _build(root: Path, s: Settings, writer: CacheWriter) -> BuildInfo:
    ann = _read_table(root / ANNOTATION_FILE, ("ID", "Quality", "HR"))
    info = _read_table(root / SUBJECT_FILE, ("ID", "Ear/finger", "Motion"))
    quality = _codes(ann, "Quality", range(2), root / ANNOTATION_FILE, strict=s.task == "quality")
    motion = _codes(info, "Motion", range(len(MOTION_CLASSES)), root / SUBJECT_FILE, strict=s.task == "motion")
    labels_of = quality if s.task == "quality" else motion
    ids = sorted(set(ann) | set(info))

    excluded: Counter = Counter()
    examples: dict[str, list[str]] = defaultdict(list)

    def exclude(reason: str, rid: str, n: int = 1) -> None:
        excluded[reason] += n
        if len(examples[reason]) < _EXAMPLES:
            examples[reason].append(rid)

    labelled = []
    for rid in ids:
        if labels_of.get(rid) is None:
            exclude(f"no {s.task} label", rid)
        else:
            labelled.append(rid)
    missing = [rid for rid in labelled if not (root / rid / f"{rid}_PPG.hea").is_file()]
    if missing and s.missing_records == "error":
        raise DataError(
            f"{len(missing)} of {len(labelled)} annotated BUT-PPG records have no record folder, e.g. "
            f"{', '.join(str(root / r / f'{r}_PPG.hea') for r in missing[:3])}. Fix: point dataset.root at the "
            "folder that holds quality-hr-ann.csv and the record folders, complete the download, or "
            f"dataset.missing_records=skip to skip them (they are counted). Expected layout: {LAYOUT}")
    missing_set = set(missing)
    for rid in missing:
        exclude("record folder missing", rid)

    span_s = s.duration_s
    repaired: Counter = Counter()
    rows: list[dict] = []
    windows: list[np.ndarray] = []
    nonfinite_ids: list[str] = []
    tails = 0
    for rid in labelled:
        if rid in missing_set:
            continue
        try:
            p_signal, names, fs, n_sig, sig_len = read_record(root / rid / f"{rid}_PPG")
        except Exception as err:  # wfdb raises many kinds; the record is counted and named, never lost silently
            exclude("unreadable", f"{rid} ({type(err).__name__}: {err})"[:200])
            continue
        expected = int(round(fs * span_s))
        x, colours, kind = orient(p_signal, names, n_sig, sig_len, expected)
        if kind != "ok":
            repaired[kind] += 1
        x, single = _select(x, colours, s.colours)
        if x is None:
            exclude("lacks the asked channels", f"{rid} (has {colours})")
            continue
        if single:
            repaired["single_channel_used"] += 1
        n_win = x.shape[0] // expected if expected > 0 else 0
        if n_win == 0:
            exclude(f"shorter than duration_s={span_s:g} s", f"{rid} ({x.shape[0]} samples at {fs:g} Hz)")
            continue
        if x.shape[0] % expected:
            tails += 1
        segs = x[: n_win * expected].T.reshape(x.shape[1], n_win, expected).transpose(1, 0, 2)  # [n_win, C, L]
        finite = np.isfinite(segs).all(axis=(1, 2))
        offsets = np.arange(n_win)
        if not finite.all():
            nonfinite_ids.append(rid)
            if s.nonfinite == "drop":
                exclude("windows with NaN/Inf (dataset.nonfinite=drop)", rid, int((~finite).sum()))
                segs, offsets = segs[finite], offsets[finite]
        if len(segs) == 0:
            continue
        up, down = Fraction(s.window_length, expected).as_integer_ratio()
        res = resample_poly(segs, up, down, axis=2, padtype="line") if (up, down) != (1, 1) else segs
        windows.append(res.astype(np.float32))
        for w in offsets:
            rows.append({"rid": rid, "fs": fs, "repaired": kind != "ok" or single, "offset": int(w)})
    if nonfinite_ids and s.nonfinite == "error":
        raise DataError(
            f"{len(nonfinite_ids)} BUT-PPG record(s) hold NaN/Inf samples, e.g. {nonfinite_ids[:8]}. "
            "Fix: dataset.nonfinite=drop to exclude their windows (they are counted in the report).")
    if not windows:
        raise DataError(f"no usable BUT-PPG record under {root}: excluded {dict(excluded)}. Expected layout: {LAYOUT}")

    signals = np.concatenate(windows)
    rid_arr = [r["rid"] for r in rows]
    labels = np.array([labels_of[r] for r in rid_arr], dtype=np.int64)
    hr_values = [_number(ann.get(r, {}).get("HR", "")) for r in rid_arr]
    meta = {
        "record_id": np.array([int(r) for r in rid_arr], dtype=np.int64),
        "site": np.array([_site(info.get(r, {}).get("Ear/finger", "")) for r in rid_arr], dtype=np.int64),
        "hr": np.array([np.nan if v is None else v for v in hr_values], dtype=np.float64),
        "quality": np.array([-1 if quality.get(r) is None else quality[r] for r in rid_arr], dtype=np.int64),
        "motion": np.array([-1 if motion.get(r) is None else motion[r] for r in rid_arr], dtype=np.int64),
        "repaired": np.array([r["repaired"] for r in rows], dtype=bool),
        "window_index": np.array([r["offset"] for r in rows], dtype=np.int64),
    }
    fs_out = s.window_length / s.duration_s
    windows_set = WindowSet(signals=signals, labels=labels,
                            subjects=np.array([int(r[:3]) for r in rid_arr], dtype=np.int64),
                            class_names=TASKS[s.task], fs=fs_out, meta=meta)
    writer.save_windows(windows_set)

    folders = {p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(r"\d{6}", p.name)}
    report = {
        "counts": {
            "records_listed": len(ids),
            "records_used": len(set(rid_arr)),
            "windows": len(signals),
            "subjects": int(len(np.unique(windows_set.subjects))),
            **{f"n_{name}": n for name, n in windows_set.class_counts().items()},
            "transposed_repaired": repaired["transposed"],
            "interleaved_repaired": repaired["interleaved"],
            "single_channel_used": repaired["single_channel_used"],
            "records_with_tail_discarded": tails,
            "folders_without_csv_row": len(folders - set(ids)),
        },
        "excluded": dict(excluded),
        "examples": {k: v for k, v in examples.items()},
        "sites": _site_summary(meta["site"], meta["quality"]),
        "notes": [
            f"task={s.task}, channels {list(s.colours)}, resampled {sorted({r['fs'] for r in rows})} Hz x "
            f"{s.duration_s:g} s -> {s.window_length} samples ({fs_out:g} Hz) with scipy.signal.resample_poly",
            f"release-1 header rule: {ORIENTATION_RULE}",
        ],
    }
    _check_sites(report["sites"])
    return BuildInfo(TASKS[s.task], fs_out, report)


def _site_summary(site: np.ndarray, quality: np.ndarray) -> dict:
    out = {}
    for name, code in (("finger", SITE_FINGER), ("ear", SITE_EAR), ("unknown", SITE_UNKNOWN)):
        mask = site == code
        rated = mask & (quality >= 0)
        if mask.any():
            out[name] = {"windows": int(mask.sum()),
                         "good_fraction": round(float((quality[rated] == 1).mean()), 4) if rated.any() else None}
    return out


def _check_sites(sites: dict) -> None:
    finger, ear = sites.get("finger", {}).get("good_fraction"), sites.get("ear", {}).get("good_fraction")
    if finger is not None and ear is not None and ear > finger:
        log.warning("butppg: ear records are rated good more often (%.2f) than finger records (%.2f); BUT-PPG's "
                    "ear records are the worse ones, so the Ear/finger coding may be the other way round "
                    "(SOURCE_SITE_CODES in ttm_experiments/data/butppg.py)", ear, finger)
