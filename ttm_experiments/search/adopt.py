"""Continuing a study whose sweeper died (SIGKILL, a node failure, a second Ctrl-C): rerun the same command.

Each trial's job runs in its own directory, `<hydra.sweep.dir>/<trial number>`, and while the trial is in
flight its sweeper holds an exclusive `flock` on `<job dir>.lock` (the kernel releases it when the sweeper
dies, even by SIGKILL; on a shared filesystem with working locks this holds across machines). A later
sweeper on the same study finds the RUNNING trials whose lock it can take: their sweeper is gone, so it
adopts them. A trial whose job had finished (its `last.pt` is the finished marker, with the objective) is
told that value; any other is launched again with the overrides it was launched with, into the same job
directory, where the job resumes from its `last.pt` into the same MLflow runs.

A sweeper records its `hydra.sweep.dir` on each trial it asks, so a rerun with the same directory knows
how many of its `n_trials` were asked already and asks only the rest. A seeded sampler is rebuilt for each
trial with a seed drawn from (seed, study name, trial number): the rerun samples what the uninterrupted
command would have sampled, concurrent sweepers on one study do not sample the same start-up points, and
each study of a nested CV gets its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ttm_experiments.utils.locks import holder, try_lock

log = logging.getLogger(__name__)

ATTR_SWEEP = "hydra.sweep_dir"  # the sweep (its hydra.sweep.dir) that asked the trial
ATTR_JOB_DIR = "hydra.job_dir"  # the trial's job directory; its lock is held while the trial is in flight
_FIX = "an RDB storage on a server and a sweep dir on a filesystem with working locks"


class TrialLocks:
    """The locks a sweeper holds on its trials' job directories, by trial number."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}

    def take(self, number: int, job_dir: Path) -> bool:
        """Take trial `number`'s lock; False while another live process holds it."""
        job_dir.parent.mkdir(parents=True, exist_ok=True)
        fd = try_lock(job_dir, what=f"the lock of trial {number}'s job directory", fix=_FIX)
        if fd is None:
            return False
        self._fds[number] = fd
        return True

    def release(self, number: int) -> None:
        fd = self._fds.pop(number, None)
        if fd is not None:
            os.close(fd)

    def held(self) -> list[int]:
        return sorted(self._fds)

    def release_all(self) -> None:
        for number in list(self._fds):
            self.release(number)


@dataclass(frozen=True)
class Orphan:
    number: int
    job_dir: Path
    overrides: list[str]
    sweep_dir: str
    finished: Optional[tuple[str, Optional[float]]]  # ("COMPLETE", value) / ("PRUNED", None) from the marker


def adopt_orphans(trials, locks: TrialLocks) -> list[Orphan]:
    """The RUNNING trials whose sweeper is gone (their lock is free): taken over, their locks now held here."""
    from ttm_experiments.training.trial import ATTR_OVERRIDES

    orphans = []
    for t in trials:
        job_dir = t.user_attrs.get(ATTR_JOB_DIR)
        if t.state.name != "RUNNING" or not job_dir:
            continue  # finished, or asked by a sweeper that has not recorded its job yet (it holds it)
        job_dir = Path(job_dir)
        if not job_dir.parent.is_dir():
            log.warning(
                "trial %d is RUNNING with its job directory %s, which this machine cannot see: left as it "
                "is (rerun the command where that directory is)",
                t.number,
                job_dir,
            )
            continue
        if not locks.take(t.number, job_dir):
            log.info("trial %d is in flight in another sweeper (process %s): left to it", t.number, holder(job_dir))
            continue
        finished = finished_outcome(job_dir)
        orphans.append(
            Orphan(
                t.number,
                job_dir,
                list(t.user_attrs.get(ATTR_OVERRIDES) or []),
                str(t.user_attrs.get(ATTR_SWEEP, "")),
                finished,
            )
        )
        what = (
            f"its job had finished ({finished[0]}); telling the study what it recorded"
            if finished
            else f"running its job again in {job_dir}, where it resumes from its last.pt"
        )
        log.warning("trial %d was left RUNNING by a sweeper that is gone: %s", t.number, what)
    return orphans


def finished_outcome(job_dir: Path) -> Optional[tuple[str, Optional[float]]]:
    """What a job directory's finished marker says: ("COMPLETE", objective), ("PRUNED", None), or None when
    the job did not finish (no `last.pt`, or a resumable one)."""
    from ttm_experiments.training import resume

    path = job_dir / resume.STATE_FILE
    if not path.is_file():
        return None
    state = resume.load_state(path)
    if not state.get("finished"):
        return None
    if state.get("pruned"):
        return ("PRUNED", None)
    if state.get("objective") is None:  # a marker from before objectives were recorded: run the job again
        return None
    return ("COMPLETE", float(state["objective"]))


def trial_seed(seed: int, study_name: str, number: int) -> int:
    digest = hashlib.sha256(f"{seed}/{study_name}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def seeded_per_trial(build: Callable[[int], Any], seed: int):
    """A sampler that rebuilds `build(trial_seed(seed, study, number))` before each trial (see the module doc)."""
    from optuna.samplers import BaseSampler

    class TrialSeeded(BaseSampler):
        def __init__(self) -> None:
            self._inner = build(seed)
            self.name = type(self._inner).__name__

        def before_trial(self, study, trial) -> None:
            self._inner = build(trial_seed(seed, study.study_name, trial.number))
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self._inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:  # the seed of each trial is fixed by its number
            pass

    return TrialSeeded()
