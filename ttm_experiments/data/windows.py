"""The predecessor's preprocessed windows, read as they are: ``ttm-train dataset=windows dataset.root=/data/windows``.

Layout::

    <root>/train/window_000000.npz   signal [C, T] float32, scalar labels (quality, hr, motion, ...),
    <root>/val/window_000000.npz     record_id, fs (optional: subject / subject_id)
    <root>/test/window_000000.npz

or all files directly in ``<root>/window_*.npz`` (no split on disk).

- Labels: the scalar key ``dataset.task``; ``quality`` and ``motion`` get BUT-PPG's class names, other keys
  "0".."K-1"; a non-integer key (``hr``) is a ConfigError; NaN labels are excluded and counted.
- Split folders are used as they are (``meta["split"]``, codes into SPLIT_NAMES; ``dataset.fold`` is then
  ignored); a record in two splits is an error, a subject in two splits a warning. Without them the suite's
  subject-wise cross-validation applies.
- Subject: ``subject``/``subject_id``, else the first three digits of a BUT-PPG record id (six digits); a file
  with neither is refused (one person could sit in two folds), unless ``dataset.subject_from=record``: then such
  a record is its own subject (counted in the report; the run is tagged ``dataset.subject_from=record``).
- Windows of another length are resampled (the whole window kept, logged), never padded or cropped; all files
  share one shape and one ``fs``.
"""

from __future__ import annotations

import logging
import math
import re
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ttm_experiments.config.schema import SubjectFrom
from ttm_experiments.data.base import SPLIT_NAMES, WindowSet
from ttm_experiments.data.butppg import MOTION_CLASSES, QUALITY_CLASSES
from ttm_experiments.data.cache import BuildInfo, Cached, CacheWriter, cache_key, load_or_build, log_report, source_root
from ttm_experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LOADER_VERSION = "2"  # 2: subject_from
PATTERN = "window_*.npz"
LAYOUT = (
    "<root>/{train,val,test}/window_NNNNNN.npz (or <root>/window_NNNNNN.npz without a split), each with "
    "`signal` [channels, T] float32, scalar labels (quality, hr, motion, ...), `record_id` and `fs`"
)
KNOWN_CLASSES = {"quality": QUALITY_CLASSES, "motion": MOTION_CLASSES}
RESERVED = ("signal", "record_id", "fs", "subject", "subject_id")


@dataclass(frozen=True)
class Settings:
    """The loader's own settings, built from a dataset config in one place (`data/prepare.py`)."""

    root: str | None  # the directory that holds train/ val/ test/ (or the files; dataset.root)
    task: str = "quality"  # the .npz key used as the class label
    window_length: int = 1024
    duration_s: float = 10.0
    subject_from: SubjectFrom = SubjectFrom.key

    def cache_settings(self) -> dict:
        """What shapes the windows besides the source files: the settings part of the cache key."""
        return {
            "task": self.task,
            "window_length": int(self.window_length),
            "duration_s": float(self.duration_s),
            "subject_from": SubjectFrom(self.subject_from).value,
        }


def load_windows_dir(s: Settings, *, cache_dir: Path) -> Cached:
    root = source_root(s.root, "windows", [], LAYOUT)
    files = find_files(root)
    settings = s.cache_settings()
    key, manifest = cache_key(
        loader="windows", version=LOADER_VERSION, settings=settings, root=root, files=[f for _, f in files]
    )
    result = load_or_build(
        cache_dir=cache_dir,
        loader="windows",
        key=key,
        manifest=manifest,
        build=lambda w: _build(files, writer=w, **settings),
    )
    log_report("windows", result.report)
    return result


def find_files(root: Path) -> list[tuple[str | None, Path]]:
    """(split or None, path) of every window file, in split then name order."""
    splits = [s for s in SPLIT_NAMES if (root / s).is_dir()]
    if splits:
        files = [(s, f) for s in splits for f in sorted((root / s).glob(PATTERN))]
        loose = sorted(root.glob(PATTERN))
        if loose:
            raise DataError(
                f"{root} holds split folders {splits} and also {len(loose)} window file(s) outside them "
                f"(e.g. {loose[0].name}): which split are they? Move them. Expected layout: {LAYOUT}"
            )
    else:
        files = [(None, f) for f in sorted(root.glob(PATTERN))]
    if not files:
        raise DataError(f"no {PATTERN} file under dataset.root={root}. Expected layout: {LAYOUT}")
    return files


def _scalar(value: np.ndarray, key: str, path: Path):
    if value.size != 1:
        raise DataError(f"{path}: `{key}` has shape {value.shape}; a label or id must be a scalar")
    return value.reshape(()).item()


def _record_name(value) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _read(path: Path, task: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            if "signal" not in keys:
                raise DataError(f"{path} has no `signal` array; its keys are {keys}. Expected layout: {LAYOUT}")
            for needed, fix in ((task, "choose dataset.task among its scalar keys"), ("record_id", "add it")):
                if needed not in keys:
                    raise DataError(f"{path} has no `{needed}` key ({fix}); its keys are {keys}")
            signal = np.asarray(z["signal"])
            label = _scalar(z[task], task, path)
            if not isinstance(label, (bool, int, float)):
                raise DataError(f"{path}: `{task}` holds {label!r}; a class label is an integer code")
            label = float(label)
            rid = _record_name(_scalar(z["record_id"], "record_id", path))
            fs = float(_scalar(z["fs"], "fs", path)) if "fs" in keys else None
            subject = next((_record_name(_scalar(z[k], k, path)) for k in ("subject", "subject_id") if k in keys), None)
            extra = {}
            for k in keys:
                if k in RESERVED or z[k].size != 1 or z[k].dtype.kind not in "biuf":
                    continue
                extra[k] = float(z[k].reshape(()))
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path} cannot be read as an .npz window file: {err}") from err
    if signal.ndim != 2:
        raise DataError(f"{path}: `signal` has shape {signal.shape}; expected [channels, T]")
    return {"signal": signal, "label": label, "rid": rid, "fs": fs, "subject": subject, "extra": extra}


def _classes(task: str, values: list[float]) -> tuple[str, ...]:
    bad = sorted({v for v in values if not float(v).is_integer()})
    if bad:
        raise ConfigError(
            f"dataset.task={task}: `{task}` holds non-integer values (e.g. {bad[:3]}), it is not a "
            "class label. Choose a categorical key, e.g. dataset.task=quality"
        )
    codes = sorted({int(v) for v in values})
    if task in KNOWN_CLASSES:
        names = KNOWN_CLASSES[task]
        if codes and (codes[0] < 0 or codes[-1] >= len(names)):
            raise DataError(f"`{task}` labels must be 0..{len(names) - 1} ({list(names)}); found {codes}")
        return names
    if codes and codes[0] < 0:
        raise DataError(f"`{task}` labels must be >= 0; found {codes}")
    return tuple(str(i) for i in range(codes[-1] + 1 if codes else 0))


def _subject(rid: str, given: str | None) -> str | None:
    """The subject key of a window file, or the subject in a BUT-PPG record id; None when there is neither."""
    if given:
        return given
    if re.fullmatch(r"\d{6}", rid):  # a BUT-PPG record: subject = first three digits
        return rid[:3]
    return None


def _subjects(kept: list[_Item], subject_from: str) -> tuple[list[str], int]:
    """Every kept window's subject, and how many records became their own subject (subject_from=record)."""
    found = [_subject(it["rid"], it["subject"]) for _, _, it in kept]
    missing = [(p, it["rid"]) for (_, p, it), s in zip(kept, found) if s is None]
    if missing and subject_from != "record":
        shown = ", ".join(f"{p} (record {rid})" for p, rid in missing[:5])
        raise DataError(
            f"{len(missing)} of {len(kept)} window files have no subject (no `subject`/`subject_id` key, and the "
            f"record id is not a BUT-PPG id), e.g. {shown}. Without subjects one person can sit in two folds. Fix: "
            "add a `subject` key to the files, or dataset.subject_from=record to make each record its own subject (the "
            "run is tagged dataset.subject_from=record)."
        )
    records = {rid for _, rid in missing}
    return [s if s is not None else it["rid"] for s, (_, _, it) in zip(found, kept)], len(records)


def _numbered(names: list[str]) -> tuple[np.ndarray, list[str] | None]:
    """Integers for names: their value when all are integers, else their rank (and the sorted names)."""
    if all(re.fullmatch(r"-?\d{1,18}", n) for n in names):
        return np.array([int(n) for n in names], dtype=np.int64), None
    unique = sorted(set(names))
    index = {n: i for i, n in enumerate(unique)}
    return np.array([index[n] for n in names], dtype=np.int64), unique


# (split or None, path, what _read found) of one window file
_Item = tuple[str | None, Path, dict]


def _build(
    files: list[tuple[str | None, Path]],
    *,
    task: str,
    window_length: int,
    duration_s: float,
    subject_from: str,
    writer: CacheWriter,
) -> BuildInfo:
    items = [(split, path, _read(path, task)) for split, path in files]
    _check_splits_disjoint(items)
    length, fs_in = _common_shape_and_rate(items, duration_s)
    unlabeled = [p for _, p, it in items if not _has_label(it["label"])]
    kept = [(split, p, it) for split, p, it in items if _has_label(it["label"])]
    if not kept:
        raise DataError(f"none of the {len(items)} window files has a `{task}` label (all NaN)")
    class_names = _classes(task, [float(it["label"]) for _, _, it in kept])
    signals = np.stack([it["signal"] for _, _, it in kept]).astype(np.float32)
    notes = []
    fs_out = fs_in
    if length != window_length:
        up, down = Fraction(int(window_length), int(length)).as_integer_ratio()
        signals = resample_poly(signals, up, down, axis=2, padtype="line").astype(np.float32)
        fs_out = fs_in * window_length / length
        note = (
            f"the windows have {length} samples at {fs_in:g} Hz; resampled explicitly to {window_length} "
            f"samples ({fs_out:g} Hz, the whole window kept) with scipy.signal.resample_poly"
        )
        log.warning("windows: %s", note)
        notes.append(note)
    span = window_length / fs_out
    if not math.isclose(span, duration_s, rel_tol=1e-3):
        notes.append(f"the windows span {span:g} s; dataset.duration_s={duration_s:g} is not used for them")
    subject_names, own = _subjects(kept, subject_from)
    if own:
        notes.append(f"{own} record(s) without a subject key are their own subject (dataset.subject_from=record)")
    subjects, meta, names = _meta(kept, task, subject_names)
    windows = WindowSet(
        signals=signals,
        labels=np.array([int(float(it["label"])) for _, _, it in kept], np.int64),
        subjects=subjects,
        class_names=class_names,
        fs=float(fs_out),
        meta=meta,
    )
    writer.save_windows(windows)
    report = _report(items, kept, task=task, windows=windows, unlabeled=unlabeled, notes=notes)
    return BuildInfo(class_names, float(fs_out), {**report, **names})


def _has_label(label) -> bool:
    return not (isinstance(label, float) and math.isnan(label))


def _check_splits_disjoint(items: list[_Item]) -> None:
    """A record in two splits would leak between training and evaluation."""
    where: dict[str, set[str]] = defaultdict(set)
    for split, _, item in items:
        if split is not None:
            where[item["rid"]].add(split)
    overlap = sorted((rid, sorted(s, key=SPLIT_NAMES.index)) for rid, s in where.items() if len(s) > 1)
    if overlap:
        shown = ", ".join(f"{rid} ({'/'.join(s)})" for rid, s in overlap[:20])
        raise DataError(
            f"{len(overlap)} record id(s) sit in more than one split: {shown}"
            f"{' ...' if len(overlap) > 20 else ''}. A predefined split must keep each record in one "
            "split. Fix: regenerate the split, or put all files in one folder so that the suite splits "
            "subject-wise itself."
        )


def _common_shape_and_rate(items: list[_Item], duration_s: float) -> tuple[int, float]:
    """The one window length T of all files and their rate (T / duration_s when the files carry no fs)."""
    shapes = Counter(item["signal"].shape for _, _, item in items)
    if len(shapes) > 1:
        example = {shape: next(str(p) for _, p, it in items if it["signal"].shape == shape) for shape in shapes}
        raise DataError(
            f"the window files have different shapes {dict(shapes)}, e.g. {example}; one dataset has "
            "one [channels, T] shape"
        )
    rates = Counter(item["fs"] for _, _, item in items)
    if len(rates) > 1:
        raise DataError(f"the window files have different sampling rates `fs` {dict(rates)}; one dataset has one")
    ((_, length),) = shapes
    return length, next(iter(rates)) or length / duration_s


def _meta(
    kept: list[_Item], task: str, subject_of: list[str]
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, list[str]]]:
    """Numbered subjects, per-window meta, and the names behind the numbers of ids that are not numeric."""
    record_ids, record_names = _numbered([it["rid"] for _, _, it in kept])
    subjects, subject_names = _numbered(subject_of)
    meta = {"record_id": record_ids}
    if any(split is not None for split, _, _ in kept):
        meta["split"] = np.array([SPLIT_NAMES.index(split) for split, _, _ in kept], dtype=np.int64)
    common = set.intersection(*(set(it["extra"]) for _, _, it in kept)) - {task}
    for k in sorted(common):
        meta[k] = np.array([it["extra"][k] for _, _, it in kept], dtype=np.float64)
    # meta["record_id"] and the subjects index these lists when the ids are not numbers
    names = {"record_names": record_names, "subject_names": subject_names}
    return subjects, meta, {k: v for k, v in names.items() if v is not None}


def _report(
    items: list[_Item], kept: list[_Item], *, task: str, windows: WindowSet, unlabeled: list[Path], notes: list[str]
) -> dict:
    split_counts = Counter(split for split, _, _ in kept) if "split" in windows.meta else None
    return {
        "counts": {
            "files": len(items),
            "windows": len(windows),
            "records": len({it["rid"] for _, _, it in kept}),
            "subjects": int(len(np.unique(windows.subjects))),
            **{f"n_{name}": n for name, n in windows.class_counts().items()},
            **({f"split_{s}": split_counts[s] for s in SPLIT_NAMES} if split_counts else {}),
        },
        "excluded": {f"no {task} label (NaN)": len(unlabeled)},
        "examples": {f"no {task} label (NaN)": [str(p) for p in unlabeled[:8]]},
        "notes": notes + [f"task={task}; split on disk: {'yes' if split_counts else 'no (subject-wise CV)'}"],
    }
