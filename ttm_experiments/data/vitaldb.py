"""VitalDB ``.vital`` files, read offline: the unlabeled PPG corpus of self-supervised stages.

Recordings (``dataset.track``, one case per file, see LAYOUT) are cut into consecutive ``duration_s`` spans;
spans with NaN/Inf (gaps) or a flat signal are rejected and counted, the rest resampled span by span (so a gap
never smears into its neighbours). Subject = the case's index in the sorted file list (``report["cases"]``).
Windows go to one shard per file and ``signals.npy`` is read memory-mapped: memory holds one recording at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ttm_experiments.data.cache import BuildInfo, Cached, CacheWriter, cache_key, load_or_build, log_report, source_root
from ttm_experiments.errors import DataError

log = logging.getLogger(__name__)

LOADER_VERSION = "1"
SOURCE_FS = 500.0  # SNUADC waveforms
CLASS_NAMES = ("unlabeled",)
FLAT_STD = 1e-6  # a window whose standard deviation is below this carries no pulse
LAYOUT = "<root>/**/*.vital: one VitalDB case per file (e.g. <root>/0001.vital), read offline"


@dataclass(frozen=True)
class Settings:
    """The loader's own settings, built from a dataset config in one place (`data/prepare.py`)."""

    root: str | None  # the directory of the .vital files (dataset.root)
    track: str = "SNUADC/PLETH"  # the waveform track read from each file
    window_length: int = 1024
    duration_s: float = 10.0


def load_vitaldb(s: Settings, *, cache_dir: Path) -> Cached:
    root = source_root(s.root, "vitaldb", [], LAYOUT)
    files = sorted(root.rglob("*.vital"))
    if not files:
        raise DataError(f"no .vital file under dataset.root={root}. Expected layout: {LAYOUT}")
    settings = {
        "track": s.track,
        "window_length": int(s.window_length),
        "duration_s": float(s.duration_s),
        "source_fs": SOURCE_FS,
        "flat_std": FLAT_STD,
    }
    key, manifest = cache_key(loader="vitaldb", version=LOADER_VERSION, settings=settings, root=root, files=files)
    result = load_or_build(
        cache_dir=cache_dir,
        loader="vitaldb",
        key=key,
        manifest=manifest,
        build=lambda w: _build(root, files, s, w),
        mmap=True,
    )
    log_report("vitaldb", result.report)
    return result


def read_track(path: Path, track: str) -> np.ndarray:
    """The samples of ``track`` in ``path`` at SOURCE_FS (float32, NaN in gaps); DataError lists the tracks."""
    import vitaldb

    try:
        vf = vitaldb.VitalFile(str(path), [track])  # a str path: never an int case id (that downloads)
    except Exception as err:  # gzip, struct and OS errors: name the file
        raise DataError(f"{path} cannot be read as a .vital file: {type(err).__name__}: {err}") from err
    if track not in vf.get_track_names():
        try:
            tracks = vitaldb.VitalFile(str(path), header_only=True).get_track_names()
        except Exception:  # noqa: BLE001 - the listing is only for the message
            tracks = []
        raise DataError(
            f"{path} has no track {track!r}; its tracks are {sorted(tracks) or 'none (unreadable?)'}. "
            "Fix: dataset.track=<one of them> or remove the file from dataset.root"
        )
    return np.asarray(vf.to_numpy([track], 1 / SOURCE_FS), dtype=np.float32).reshape(-1)


@dataclass
class _Scan:
    """The first pass over the files: one shard of resampled windows per file, and the rejected spans."""

    shards: list[tuple[Path, int]] = field(default_factory=list)
    cases: list[np.ndarray] = field(default_factory=list)
    starts: list[np.ndarray] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"spans": 0, "nan": 0, "flat": 0})
    examples: dict[str, list[str]] = field(default_factory=lambda: {"nan": [], "flat": []})


def _build(root: Path, files: list[Path], conf: Settings, writer: CacheWriter) -> BuildInfo:
    scan = _Scan()
    for case, path in enumerate(files):
        _scan_file(scan, case=case, path=path, conf=conf, directory=writer.dir)
    total = sum(k for _, k in scan.shards)
    if total == 0:
        raise DataError(
            f"no usable {conf.duration_s:g} s window in {len(files)} .vital file(s) under {root}: "
            f"{scan.counts['nan']} with NaN, {scan.counts['flat']} flat, of {scan.counts['spans']}"
        )
    signals = writer.open_signals((total, 1, int(conf.window_length)))
    at = 0
    for shard, k in scan.shards:
        signals[at : at + k, 0, :] = np.load(shard)
        at += k
        shard.unlink()
    subjects = np.concatenate(scan.cases)
    writer.save("labels", np.zeros(total, dtype=np.int64))
    writer.save("subjects", subjects)
    writer.save_meta("start_s", np.concatenate(scan.starts).astype(np.float64))
    fs_out = conf.window_length / conf.duration_s
    nan, flat = "windows with NaN/Inf", f"flat windows (std < {FLAT_STD:g})"
    report = {
        "counts": {
            "files": len(files),
            "windows": total,
            "cases_with_windows": int(len(np.unique(subjects))),
            "spans": scan.counts["spans"],
        },
        "excluded": {nan: scan.counts["nan"], flat: scan.counts["flat"]},
        "examples": {nan: scan.examples["nan"], flat: scan.examples["flat"]},
        "notes": [
            f"track {conf.track} at {SOURCE_FS:g} Hz, {conf.duration_s:g} s spans resampled to "
            f"{conf.window_length} samples ({fs_out:g} Hz) with scipy.signal.resample_poly; unlabeled"
        ],
        "cases": [f.relative_to(root).as_posix() for f in files],
    }
    return BuildInfo(CLASS_NAMES, fs_out, report)


def _scan_file(scan: _Scan, *, case: int, path: Path, conf: Settings, directory: Path) -> None:
    """Cut one recording into spans, reject those with NaN or a flat signal, resample the rest into a shard."""
    span = int(round(conf.duration_s * SOURCE_FS))
    up, down = Fraction(int(conf.window_length), span).as_integer_ratio()
    x = read_track(path, conf.track)
    n = len(x) // span
    spans = x[: n * span].reshape(n, span)
    finite = np.isfinite(spans).all(axis=1)
    flat = np.zeros(n, dtype=bool)
    flat[finite] = spans[finite].std(axis=1) < FLAT_STD
    keep = finite & ~flat
    scan.counts["spans"] += n
    scan.counts["nan"] += int((~finite).sum())
    scan.counts["flat"] += int(flat.sum())
    for reason, mask in (("nan", ~finite), ("flat", flat)):
        if mask.any() and len(scan.examples[reason]) < 8:
            scan.examples[reason].append(f"{path.name}@{int(np.argmax(mask) * conf.duration_s)}s")
    kept = spans[keep]
    if len(kept):
        res = resample_poly(kept.astype(np.float64), up, down, axis=1, padtype="line").astype(np.float32)
        shard = directory / f"shard-{case:06d}.npy"
        np.save(shard, res)
        scan.shards.append((shard, len(res)))
        scan.cases.append(np.full(len(res), case, dtype=np.int64))
        scan.starts.append(np.flatnonzero(keep) * conf.duration_s)
    log.debug("vitaldb: %s: %d spans, %d kept", path.name, n, int(keep.sum()))
