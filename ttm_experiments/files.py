"""Atomic writes: fill a temporary file or directory beside the target, fsync it, then ``os.replace``.

Readers (a concurrent run, a resumed run, a later cache hit) see the old content or the new one, never half
of it; a failed write leaves the old target as it was and no temporary behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to (``torch.save(obj, tmp)``, ``np.save(tmp, a)``, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
