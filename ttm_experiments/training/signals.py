"""Graceful stop on SIGTERM (preemption: SLURM, `docker stop`, Colab) and SIGINT (Ctrl-C).

The first signal only sets a flag; the training loops call `check()` after every optimizer step, so the
step in flight finishes and the run stops at a clean point: `last.pt` (written atomically at every epoch
end and before the first epoch) stays the state to resume from, the MLflow runs are marked KILLED with
`stop_reason`, and the process exits with `RESUMABLE` (75, EX_TEMPFAIL). A second signal stops at once
(the default action: SIGTERM terminates, SIGINT raises KeyboardInterrupt).

A run without optimizer steps (a baseline, a linear probe) has no boundary to stop at: it finishes and is recorded,
then `Stopped(finished=True)` ends the process there, so a multirun starts no further job; the exit status is then
the signal's own (143 for SIGTERM, 130 for SIGINT), not RESUMABLE: there is nothing to resume.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)

RESUMABLE = 75  # EX_TEMPFAIL from sysexits.h: a temporary failure, run the same command again
REASONS = {signal.SIGTERM: "preempted", signal.SIGINT: "interrupted"}
# the shell's status for a process ended by a signal (128 + its number), used when the run had finished
EXIT_STATUS = {reason: 128 + int(signum) for signum, reason in REASONS.items()}
_requested: list[str] = []  # the reason of the first signal, while a run is under `graceful_stop`


class Stopped(BaseException):
    """Raised at the first step boundary after SIGTERM/SIGINT; a BaseException so that nothing that catches
    `Exception` (Hydra's job runner, a sweeper) treats it as a failed job and goes on with the sweep."""

    def __init__(self, reason: str, finished: bool = False):
        text = "the run had finished and is recorded" if finished else "rerun the same command to resume"
        super().__init__(f"stopped by a signal ({reason}); {text}")
        self.reason = reason
        self.finished = finished


def requested() -> str | None:
    return _requested[0] if _requested else None


def check(finished: bool = False) -> None:
    """Call at a point where stopping leaves a clean state (after an optimizer step); `finished`: after the whole
    run, so that a signal that came while it had no step boundary (a baseline, a probe) still stops the process."""
    if _requested:
        raise Stopped(_requested[0], finished=finished)


def _handle(signum: int, frame) -> None:
    if _requested:  # the second signal: stop at once
        log.warning("second signal (%s): stopping at once", signal.Signals(signum).name)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _requested.append(REASONS[signum])
    log.warning(
        "%s received: finishing the current step, then stopping (resumable); send it again to stop at once",
        signal.Signals(signum).name,
    )


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into a stop at the next step boundary for the body (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (e.g. a run inside a thread pool)
        return
    # inside a submitit job, SIGTERM belongs to submitit (it ignores it and requeues the job on its USR2 warning;
    # the requeued job resumes from last.pt): only SIGINT is taken over there
    taken = [signal.SIGINT] if os.environ.get("SUBMITIT_EXECUTOR") else list(REASONS)
    previous = {s: signal.signal(s, _handle) for s in taken}
    _requested.clear()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _requested.clear()
