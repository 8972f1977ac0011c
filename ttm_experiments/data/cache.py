"""On-disk cache of loaded datasets: ``<cache_dir>/<loader>/<key>/`` holds one ``.npy`` per array and ``info.json``.

The key is the sha1 of a manifest: the loader and its settings, the code that shapes the data (every source of
``ttm_experiments/data`` and the versions of the libraries that read or simulate it), and every source file's
path, size and **content** (xxh3-128; a relabelled file that kept its size and mtime, as ``cp -p``, ``rsync -a``
and tar keep them, is a new entry). A stale entry is never read. Hashing 2,000 MiB in 1,000 files took 0.15-0.18 s
with the files in the page cache (about 11 GiB/s on one core; BENCHMARKS.md); from a cold disk, reading them
dominates. Entries are stored atomically and never deleted: ``rm -r <cache_dir>/<loader>`` frees the space.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import xxhash

from ttm_experiments.data.base import WindowSet
from ttm_experiments.errors import DataError
from ttm_experiments.utils.files import atomic_directory

log = logging.getLogger(__name__)

# Bump when the layout of an entry changes: it is part of every key.
CACHE_FORMAT = "2"  # 2: content digests and the data code in the key


def source_root(root: str | None, dataset: str, required: Sequence[str], layout: str) -> Path:
    """The dataset's root directory, checked: it is given, exists, and holds the ``required`` files.
    Every error repeats ``layout`` (the expected layout) and names the override that fixes it."""
    example = f"ttm-train dataset={dataset} dataset.root=/path/to/{dataset}"
    if not root:
        raise DataError(
            f"dataset={dataset} needs dataset.root, the directory of the data: `{example}`. Expected layout: {layout}"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise DataError(
            f"dataset.root={root} {what}. Point it at the {dataset} directory (`{example}`). Expected layout: {layout}"
        )
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        below = sorted(p.parent for pattern in (f"*/{missing[0]}", f"*/*/{missing[0]}") for p in path.glob(pattern))
        hint = f" It is in {below[0]}: dataset.root={below[0]}?" if below else ""
        raise DataError(
            f"dataset.root={root} lacks {', '.join(missing)}: is it the {dataset} directory?{hint} "
            f"Expected layout: {layout}"
        )
    return path


# the libraries whose versions can change what a loader or the simulator produces
DATA_LIBRARIES = ("numpy", "scipy", "neurokit2", "wfdb", "vitaldb")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """SHA-256 (16 hex) of the data package's sources and the versions of the libraries in DATA_LIBRARIES: a
    change to a loader or the simulator (or their libraries) makes new entries without a hand-bumped version."""
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for lib in DATA_LIBRARIES:
        h.update(f"{lib}={metadata.version(lib)}\0".encode())
    return h.hexdigest()[:16]


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """xxh3-128 of a file's content (about 11 GiB/s on one core from the page cache)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_manifest(root: Path, files: Iterable[Path]) -> list[list]:
    """``[relative path, size, content digest]`` of every file, sorted by path."""
    return sorted([f.relative_to(root).as_posix(), f.stat().st_size, file_digest(f)] for f in files)


def cache_key(
    *, loader: str, version: str, settings: Mapping, root: Path | None = None, files: Iterable[Path] = ()
) -> tuple[str, dict]:
    """The key of an entry (sha1 of the manifest, 16 hex digits) and the manifest itself.
    ``root`` and ``files`` are the source files; a generated dataset (synthetic) has none."""
    manifest = {
        "format": CACHE_FORMAT,
        "loader": loader,
        "version": version,
        "code": code_version(),
        "settings": dict(settings),
        "root": None if root is None else str(root.resolve()),
        "sources": [] if root is None else source_manifest(root, files),
    }
    payload = json.dumps(manifest, sort_keys=True, default=str).encode()
    return hashlib.sha1(payload).hexdigest()[:16], manifest


@dataclass
class BuildInfo:
    """What a builder returns besides the arrays it wrote."""

    class_names: tuple[str, ...]
    fs: float
    report: dict


@dataclass
class Cached:
    """A loaded dataset, the loader's report (counts of what was used and excluded) and where it came from."""

    windows: WindowSet
    report: dict
    hit: bool
    path: Path


class CacheWriter:
    """Writes the arrays of one entry into its temporary directory."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.meta: list[str] = []
        self._memmaps: list[np.memmap] = []

    def save(self, name: str, array: np.ndarray) -> None:
        np.save(self.dir / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)

    def save_meta(self, name: str, array: np.ndarray) -> None:
        self.save(f"meta__{name}", array)
        self.meta.append(name)

    def open_signals(self, shape: tuple[int, int, int]) -> np.memmap:
        """A writable float32 ``signals.npy`` of ``shape`` on disk, to fill piece by piece."""
        mm = np.lib.format.open_memmap(self.dir / "signals.npy", mode="w+", dtype=np.float32, shape=shape)
        self._memmaps.append(mm)
        return mm

    def save_windows(self, windows: WindowSet) -> None:
        self.save("signals", windows.signals.astype(np.float32, copy=False))
        self.save("labels", windows.labels.astype(np.int64, copy=False))
        self.save("subjects", windows.subjects.astype(np.int64, copy=False))
        for name, array in windows.meta.items():
            self.save_meta(name, array)

    def finish(self, info: BuildInfo, manifest: dict) -> None:
        """Flush the memory-mapped arrays and write ``info.json`` and ``manifest.json``: the entry is complete."""
        for mm in self._memmaps:
            mm.flush()
        self._memmaps.clear()
        (self.dir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        (self.dir / "info.json").write_text(
            json.dumps(
                {
                    "class_names": list(info.class_names),
                    "fs": float(info.fs),
                    "meta": self.meta,
                    "report": info.report,
                    "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                },
                indent=1,
                default=str,
            )
        )


def load_or_build(
    *,
    cache_dir: Path,
    loader: str,
    key: str,
    manifest: dict,
    build: Callable[[CacheWriter], BuildInfo],
    mmap: bool = False,
) -> Cached:
    """Read the entry ``key`` of ``loader``, or build it with ``build(writer)`` and store it first.
    ``mmap=True`` returns ``signals`` as a read-only ``np.memmap`` (for corpora larger than memory).
    An entry that cannot be read is rebuilt; errors raised by ``build`` leave nothing behind."""
    path = Path(cache_dir) / loader / key
    cached = _read_existing(path, loader, mmap)
    if cached is not None:
        return cached
    start = time.perf_counter()
    _store(path, loader, manifest, build)
    windows, report = _read_entry(path, mmap)
    log.info("%s: built %d windows in %.1f s, cached at %s", loader, len(windows), time.perf_counter() - start, path)
    return Cached(windows, report, False, path)


def _read_existing(path: Path, loader: str, mmap: bool) -> Cached | None:
    """The entry at ``path``; None when there is none, or when it is unreadable (then it is removed)."""
    if not path.is_dir():
        return None
    start = time.perf_counter()
    try:
        windows, report = _read_entry(path, mmap)
    except (OSError, ValueError, KeyError, DataError) as err:
        log.warning("cache entry %s is unreadable (%s); rebuilding it", path, err)
        shutil.rmtree(path, ignore_errors=True)
        return None
    log.info("%s: %d windows from the cache %s in %.2f s", loader, len(windows), path, time.perf_counter() - start)
    return Cached(windows, report, True, path)


def _store(path: Path, loader: str, manifest: dict, build: Callable[[CacheWriter], BuildInfo]) -> None:
    try:
        with ExitStack() as stack:
            try:
                tmp = stack.enter_context(atomic_directory(path))
            except OSError as err:
                raise DataError(
                    f"cannot write the {loader} cache below {path.parent}: {err}. Set paths.cache_dir "
                    "(or paths.runs_dir) to a writable directory."
                ) from err
            writer = CacheWriter(tmp)
            writer.finish(build(writer), manifest)
    except FileExistsError:
        # two runs built the same entry at once: the same content by construction, keep the first
        log.info("%s: another process stored the same cache entry first; using it", loader)


def _read_entry(path: Path, mmap: bool) -> tuple[WindowSet, dict]:
    info = json.loads((path / "info.json").read_text())

    def arr(name: str, memory_map: bool = False) -> np.ndarray:
        return np.load(path / f"{name}.npy", mmap_mode="r" if memory_map else None, allow_pickle=False)

    windows = WindowSet(
        signals=arr("signals", mmap),
        labels=arr("labels"),
        subjects=arr("subjects"),
        class_names=tuple(info["class_names"]),
        fs=float(info["fs"]),
        meta={name: arr(f"meta__{name}") for name in info["meta"]},
    )
    return windows, info["report"]


def log_report(loader: str, report: Mapping) -> None:
    """Log a loader's counts: what was used and what was excluded, and why (one line per reason)."""
    counts = report.get("counts", {})
    log.info("%s: %s", loader, ", ".join(f"{k} {v}" for k, v in counts.items()))
    for reason, n in report.get("excluded", {}).items():
        if n:
            examples = report.get("examples", {}).get(reason, [])
            log.warning(
                "%s: %d excluded (%s)%s",
                loader,
                n,
                reason,
                f", e.g. {', '.join(map(str, examples))}" if examples else "",
            )
    for note in report.get("notes", []):
        log.info("%s: %s", loader, note)
