"""Cross-process file locks for the first use of a shared store (`fcntl.flock` on `<file>.lock` beside it).

Creating or migrating a SQLite store is not safe when several processes do it at once (a SLURM array, two
terminals, `parallel`): all but one fail with "table ... already exists" and the store is left half-made.
The lock serialises that first use. The kernel releases a `flock` when its holder dies, even by SIGKILL,
so a lock file left by a dead process never blocks anyone: it is just a file, taken over at once.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ttm_experiments.errors import StoreError

log = logging.getLogger(__name__)

# what flock raises where the filesystem has no working locks (some NFS mounts without lockd, some FUSE)
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
WAIT_S = 600.0  # a migration takes seconds; a holder alive for longer than this is stuck


def flock_nonblocking(fd: int) -> bool:
    """Try to take an exclusive `flock` on `fd` without waiting: True when taken, False while another process
    holds it. Any other OSError propagates (its errno in NO_LOCKS: this filesystem has no working locks)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def lock_path(target: Path) -> Path:
    return Path(target).with_name(Path(target).name + ".lock")


@contextmanager
def file_lock(
    target: Path, *, what: str, fix: str, wait_s: float = WAIT_S, holding: str = "prepares the store"
) -> Iterator[None]:
    """Hold an exclusive lock on `<target>.lock` (created beside `target`) for the body.

    `what` names the store in messages (`tracking.uri=...`), `fix` says what to use where locks do not work.
    Waits up to `wait_s` for a live holder (its pid is in the lock file), then fails naming it.
    """
    path = lock_path(target)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        _acquire(fd, path, what=what, fix=fix, wait_s=wait_s, holding=holding)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def try_lock(target: Path, *, what: str, fix: str) -> int | None:
    """Take the lock on `<target>.lock` without waiting: the open descriptor that holds it (`os.close` releases
    it; so does the holder's death), or None while a live process holds it."""
    path = lock_path(target)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        taken = flock_nonblocking(fd)
    except OSError as err:
        os.close(fd)
        if err.errno in NO_LOCKS:
            raise StoreError(
                f"{what}: the filesystem of {path.parent} does not support file locks "
                f"({os.strerror(err.errno)}). Fix: {fix}"
            ) from None
        raise
    if not taken:
        os.close(fd)
        return None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:  # e.g. a full disk: do not keep a lock nobody will release
        os.close(fd)
        raise
    return fd


def holder(target: Path) -> str:
    """The pid written into `<target>.lock` by its last holder ('?' when unknown)."""
    return _holder(lock_path(target))


def _acquire(fd: int, path: Path, *, what: str, fix: str, wait_s: float, holding: str) -> None:
    deadline, logged = time.monotonic() + wait_s, False
    while True:
        try:
            if flock_nonblocking(fd):
                return
        except OSError as err:
            if err.errno in NO_LOCKS:
                raise StoreError(
                    f"{what}: the filesystem of {path.parent} does not support file locks ({os.strerror(err.errno)}), "
                    f"so processes sharing a store there cannot be kept from corrupting it (SQLite relies on "
                    f"locks too). Fix: {fix}"
                ) from None
            raise
        holder = _holder(path)
        if time.monotonic() > deadline:
            raise StoreError(
                f"{what}: {path} has been held for over {wait_s:.0f} s by process {holder}, which is "
                f"still alive. Fix: wait for it or stop it (a dead holder releases the lock by itself)."
            )
        if not logged:
            log.info("waiting for %s (held by process %s while it %s)", path, holder, holding)
            logged = True
        time.sleep(0.05)


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"
