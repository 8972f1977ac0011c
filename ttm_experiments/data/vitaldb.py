"""VitalDB ``.vital`` files, read offline: the unlabeled PPG corpus of self-supervised stages.

``ttm-train dataset=vitaldb dataset.root=/data/vitaldb`` (or, for the pretraining corpus of a hybrid schedule,
``dataset.pretrain=vitaldb dataset.pretrain_root=/data/vitaldb``). Layout: ``<root>/**/*.vital`` (e.g.
``<root>/0001.vital``), one surgical case per file, as downloaded from vitaldb.net.

Each file is opened with ``vitaldb.VitalFile(str(path), [track])`` and read with
``.to_numpy([track], 1/500)``: always a path string, never an integer case id (an integer makes the package
download the case, which cannot work offline). ``track`` is ``dataset.track`` (default ``SNUADC/PLETH``,
500 Hz). A file without it stops the load with the tracks it does have.

The recording is cut into consecutive, non-overlapping spans of ``duration_s`` seconds (the tail shorter than a
span is left out). A span with any NaN/Inf (VitalDB recordings have gaps) or a flat signal (std below
FLAT_STD: probe off, saturation) is rejected and counted; the others are resampled from 500 Hz to
``window_length`` samples with ``scipy.signal.resample_poly`` (per window, so a gap never smears into its
neighbours). Labels are all 0 with the single class ``unlabeled``; subject = the case's index in the sorted
file list (``report["cases"]`` names the files); ``meta["start_s"]`` is each window's start in its recording.

Large corpora need not fit in memory: each file's windows go to a shard on disk, the shards are copied into one
``signals.npy`` (``np.lib.format.open_memmap``) in the cache, and the returned WindowSet's ``signals`` is a
read-only ``np.memmap`` of it. Memory use is about one recording at a time.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ttm_experiments.data.base import WindowSet
from ttm_experiments.data.cache import BuildInfo, Cached, CacheWriter, cache_key, load_or_build, log_report, source_root
from ttm_experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LOADER_VERSION = "1"
SOURCE_FS = 500.0  # SNUADC waveforms
CLASS_NAMES = ("unlabeled",)
FLAT_STD = 1e-6  # a window whose standard deviation is below this carries no pulse
LAYOUT = "<root>/**/*.vital: one VitalDB case per file (e.g. <root>/0001.vital), read offline"


def load(spec, cache_dir: Path) -> WindowSet:
    """The `dataset=vitaldb` entry of the LOADERS registry."""
    return load_vitaldb(spec, cache_dir).windows


def load_vitaldb(spec, cache_dir: Path) -> Cached:
    if spec.channels != 1:
        raise ConfigError(f"dataset=vitaldb reads one PPG track ({spec.track}), but dataset.channels={spec.channels}. "
                          "Fix: dataset.channels=1")
    root = source_root(spec.root, "vitaldb", [], LAYOUT)
    files = sorted(root.rglob("*.vital"))
    if not files:
        raise DataError(f"no .vital file under dataset.root={root}. Expected layout: {LAYOUT}")
    settings = {"track": spec.track, "window_length": int(spec.window_length), "duration_s": float(spec.duration_s),
                "source_fs": SOURCE_FS, "flat_std": FLAT_STD}
    key, manifest = cache_key("vitaldb", LOADER_VERSION, settings, root, files)
    result = load_or_build(Path(cache_dir), "vitaldb", key, manifest,
                           lambda w: _build(root, files, spec, w), mmap=True)
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
        raise DataError(f"{path} has no track {track!r}; its tracks are {sorted(tracks) or 'none (unreadable?)'}. "
                        "Fix: dataset.track=<one of them> or remove the file from dataset.root")
    return np.asarray(vf.to_numpy([track], 1 / SOURCE_FS), dtype=np.float32).reshape(-1)


def _build(root: Path, files: list[Path], spec, writer: CacheWriter) -> BuildInfo:
    span = int(round(spec.duration_s * SOURCE_FS))
    up, down = Fraction(int(spec.window_length), span).as_integer_ratio()
    shards: list[tuple[Path, int]] = []
    counts = {"spans": 0, "nan": 0, "flat": 0}
    examples: dict[str, list[str]] = {"nan": [], "flat": []}
    cases, starts = [], []
    for case, path in enumerate(files):
        x = read_track(path, spec.track)
        n = len(x) // span
        spans = x[: n * span].reshape(n, span)
        finite = np.isfinite(spans).all(axis=1)
        flat = np.zeros(n, dtype=bool)
        flat[finite] = spans[finite].std(axis=1) < FLAT_STD
        keep = finite & ~flat
        counts["spans"] += n
        counts["nan"] += int((~finite).sum())
        counts["flat"] += int(flat.sum())
        for reason, mask in (("nan", ~finite), ("flat", flat)):
            if mask.any() and len(examples[reason]) < 8:
                examples[reason].append(f"{path.name}@{int(np.argmax(mask) * spec.duration_s)}s")
        kept = spans[keep]
        if len(kept):
            res = resample_poly(kept.astype(np.float64), up, down, axis=1, padtype="line").astype(np.float32)
            shard = writer.dir / f"shard-{case:06d}.npy"
            np.save(shard, res)
            shards.append((shard, len(res)))
            cases.append(np.full(len(res), case, dtype=np.int64))
            starts.append(np.flatnonzero(keep) * spec.duration_s)
        log.debug("vitaldb: %s: %d spans, %d kept", path.name, n, int(keep.sum()))
    total = sum(k for _, k in shards)
    if total == 0:
        raise DataError(f"no usable {spec.duration_s:g} s window in {len(files)} .vital file(s) under {root}: "
                        f"{counts['nan']} with NaN, {counts['flat']} flat, of {counts['spans']}")
    signals = writer.open_signals((total, 1, int(spec.window_length)))
    at = 0
    for shard, k in shards:
        signals[at:at + k, 0, :] = np.load(shard)
        at += k
        shard.unlink()
    del signals
    subjects = np.concatenate(cases)
    writer.save("labels", np.zeros(total, dtype=np.int64))
    writer.save("subjects", subjects)
    writer.save_meta("start_s", np.concatenate(starts).astype(np.float64))
    fs_out = spec.window_length / spec.duration_s
    report = {
        "counts": {"files": len(files), "windows": total, "cases_with_windows": int(len(np.unique(subjects))),
                   "spans": counts["spans"]},
        "excluded": {"windows with NaN/Inf": counts["nan"], f"flat windows (std < {FLAT_STD:g})": counts["flat"]},
        "examples": {"windows with NaN/Inf": examples["nan"], f"flat windows (std < {FLAT_STD:g})": examples["flat"]},
        "notes": [f"track {spec.track} at {SOURCE_FS:g} Hz, {spec.duration_s:g} s spans resampled to "
                  f"{spec.window_length} samples ({fs_out:g} Hz) with scipy.signal.resample_poly; unlabeled"],
        "cases": [f.relative_to(root).as_posix() for f in files],
    }
    return BuildInfo(CLASS_NAMES, fs_out, report)
