"""Fault injection for the chaos test (`bench/chaos.py`, `make chaos`): SIGKILL this process at a named point.

    TTM_FAULT=<point>:<n>      kill the process the n-th time (counted from 1) it reaches `point`
    TTM_FAULT=epoch.ssl:2      e.g. at the end of the second self-supervised epoch
    TTM_FAULT=count:<file>     kill nothing; append each point reached to <file>, one name a line (the chaos
                               script's reference run: which kills a config offers, in order)

Unset (the normal case), `point()` is one comparison: the variable is read once, at import. A malformed value
is an error at import, not a silent no-op, so a chaos run never "survives" a kill that was never armed.
The kill is `os.kill(os.getpid(), SIGKILL)`: no handler, no `finally`, no flush runs, as with the OOM killer,
a node failure or SLURM's SIGKILL after the grace period.

Points (one line each where they are called):

- `step`: after every optimizer step of a supervised or self-supervised epoch (training/loop.py, training/ssl.py)
- `epoch.supervised`, `epoch.ssl`: at every epoch end, its `last.pt` written and its metrics not yet logged
  (what resume repairs from the state's `pending` metrics)
- `checkpoint.write`: inside every atomic checkpoint write, the temporary file written and not yet renamed
  (models/checkpoint.py: `last.pt`, `stage-*.pt`, `best.pt`)
- `mlflow.log`: after each metric batch of `MlflowTracker.log_metrics` (an epoch's first batch goes to the
  parent run: a kill there leaves the stage run's batch unwritten)
- `optuna.trial`: in the sweeper, after a batch of trials was asked and its jobs ran, before they are told
  (search/sweeper.py)
- `stage_cache.write`: inside a write of the stage cache (training/stage_cache.py)
"""

from __future__ import annotations

import os
import signal

ENV = "TTM_FAULT"
POINTS = (
    "step",
    "epoch.supervised",
    "epoch.ssl",
    "checkpoint.write",
    "mlflow.log",
    "optuna.trial",
    "stage_cache.write",
)


def _parse(value: str | None) -> tuple[str, int | str] | None:
    if not value:
        return None
    name, sep, arg = value.partition(":") if value.startswith("count:") else value.rpartition(":")
    if name == "count" and arg:
        return name, arg
    if not sep or name not in POINTS or not arg.isdigit() or int(arg) < 1:
        raise ValueError(
            f"{ENV}={value!r}: expected <point>:<n> with n >= 1 and point one of {', '.join(POINTS)}, or count:<file>"
        )
    return name, int(arg)


_armed = _parse(os.environ.get(ENV))
_seen = 0


def point(name: str) -> None:
    """A place where a kill can strike; SIGKILLs this process at the armed point's n-th visit."""
    global _seen
    if _armed is None:
        return
    if _armed[0] == "count":
        with open(_armed[1], "a") as f:  # appends of one short line: processes of a sweep may share the file
            f.write(name + "\n")
        return
    if name != _armed[0]:
        return
    _seen += 1
    if _seen == _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)
