"""Atomic writes: fill a temporary file or directory beside the target, fsync it, then ``os.replace``.

Readers (a concurrent run, a resumed run, a later cache hit) see the old content or the new one, never half
of it; a failed write leaves the old target as it was and no temporary behind. A writer killed by SIGKILL
cannot remove its temporary file (`.<name>.<random>.tmp`): the writer holds a `flock` on it while writing, so
the next write of the same target (and a resumed run, for its whole directory) deletes those no live writer
holds.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ttm_experiments.errors import StoreError, UserError
from ttm_experiments.utils.locks import NO_LOCKS, flock_nonblocking

log = logging.getLogger(__name__)

STALE_AFTER_S = 2.0  # younger temporaries are left alone (a writer between creating and locking its file)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to (``torch.save(obj, tmp)``, ``np.save(tmp, a)``, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        _lock(fd)  # held until the rename: marks the temporary as in use
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        # torch.save reports a full disk as a RuntimeError of its zip writer: look at the disk itself too
        full = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or (
            isinstance(err, Exception) and _full(path)
        )
        tmp.unlink(missing_ok=True)
        if full:  # the old target is intact: say so, in one line
            raise StoreError(
                f"{path}: no space left on the device of {path.parent}; the previous {path.name} (if any) is kept. "
                "Fix: free space there (or point the setting that chose it, e.g. paths.runs_dir, at another disk) and "
                "rerun the same command (a training run resumes from its last checkpoint)."
            ) from None
        raise
    finally:
        os.close(fd)


def _full(path: Path) -> bool:
    """The file system of `path` has (almost) no space left for this process."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def remove_stale_temporaries(directory: Path, name: str = "*") -> list[Path]:
    """Delete the temporary files of `atomic_file` for target `name` (any: "*") in `directory` that no live
    writer holds (a writer killed mid-write); returns them."""
    removed = []
    for tmp in Path(directory).glob(f".{name}.*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime < STALE_AFTER_S:
                continue
            fd = os.open(tmp, os.O_RDONLY)
        except FileNotFoundError:  # another process removed it first
            continue
        try:
            if _unheld(fd):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        finally:
            os.close(fd)
    if removed:
        log.info(
            "removed %d temporary file(s) left by a writer that was killed: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


def _unheld(fd: int) -> bool:
    """No live writer holds this temporary (where locks do not work we cannot tell: treated as held)."""
    try:
        return flock_nonblocking(fd)
    except OSError as err:
        if err.errno not in NO_LOCKS:
            raise
        return False


def _lock(fd: int) -> None:
    try:
        flock_nonblocking(fd)  # a fresh temporary: nobody else holds it
    except OSError as err:  # no locks on this filesystem: the temporary is unmarked, the write itself still atomic
        if err.errno not in NO_LOCKS:
            raise


def writable_directory(path: Path, *, what: str, fix: str, error: type[UserError]) -> Path:
    """Create `path` (with its parents) and check that this process can write there; otherwise `error`, a one-line
    message naming `what` (the setting), the path, the reason and `fix`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise error(f"{what}: {path} cannot be created ({err.strerror or err}). Fix: {fix}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise error(f"{what}: {path} is not writable. Fix: {fix}")
    return path


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A temporary directory beside ``path`` to fill; on success its files are synced and it becomes ``path``.
    Raises FileExistsError when ``path`` appeared meanwhile (another process stored it first); ours is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                _fsync(f)
        try:
            os.replace(tmp, path)
        except OSError as err:  # a non-empty directory cannot be replaced
            if not path.is_dir():
                raise
            raise FileExistsError(f"{path} was stored by another process first") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    """Flush ``path`` to disk, so that the rename cannot outlive the data after a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
