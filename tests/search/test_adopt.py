"""Continuing a study whose sweeper died (`ttm_experiments/search/adopt.py`): trial locks, adoption of the
trials a dead sweeper left RUNNING, the finished marker's objective, and per-trial sampler seeds.

The end-to-end check (SIGKILL inside a trial and between a job and its trial's tell, rerun, the uninterrupted
study) is the slow chaos test
`tests/e2e/test_chaos.py::test_a_study_killed_inside_a_trial_resumes_to_the_uninterrupted_study`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from ttm_experiments.search.adopt import (
    ATTR_JOB_DIR,
    ATTR_SWEEP,
    TrialLocks,
    adopt_orphans,
    finished_outcome,
    seeded_per_trial,
    trial_seed,
)
from ttm_experiments.training import resume
from ttm_experiments.training.trial import ATTR_OVERRIDES

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {
    "x": optuna.distributions.FloatDistribution(0.0, 1.0),
    "k": optuna.distributions.CategoricalDistribution([0, 1, 2, 4]),
}


def tpe(seed: int):
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)


def ask_and_tell(study, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=SPACE)
        study.tell(trial, trial.params["x"])
        out.append(dict(trial.params))
    return out


def test_a_rerun_with_a_new_sampler_samples_what_the_uninterrupted_study_sampled(tmp_path):
    """Trials 0-4 (3 random, 2 TPE) in one go; the same study stopped after trial 1 and continued by a new process
    (a new sampler object): the same points. With a plain seeded TPESampler the continuation differs."""
    whole = optuna.create_study(study_name="s", sampler=seeded_per_trial(tpe, 0), direction="maximize")
    reference = ask_and_tell(whole, 5)
    first = optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path}/a.db", sampler=seeded_per_trial(tpe, 0), direction="maximize"
    )
    head = ask_and_tell(first, 2)
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/a.db", sampler=seeded_per_trial(tpe, 0))
    assert head + ask_and_tell(again, 3) == reference
    plain = optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path}/b.db", sampler=tpe(0), direction="maximize"
    )
    ask_and_tell(plain, 2)
    plain = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/b.db", sampler=tpe(0))
    assert ask_and_tell(plain, 1)[0] != reference[2]  # why the seeds are per trial


def test_trial_seeds_differ_across_trials_studies_and_seeds():
    seeds = {trial_seed(s, name, n) for s in (0, 1) for name in ("fold0", "fold1") for n in range(50)}
    assert len(seeds) == 200
    assert trial_seed(0, "fold0", 3) == trial_seed(0, "fold0", 3)
    # two sweepers on one study (each its own sampler): their start-up trials are not the same points
    study = optuna.create_study(study_name="shared", direction="maximize")
    a, b = seeded_per_trial(tpe, 0), seeded_per_trial(tpe, 0)
    points = []
    for sampler in (a, b, a, b):
        study.sampler = sampler
        points.append(ask_and_tell(study, 1)[0]["x"])
    assert len(set(points)) == 4


def test_a_study_with_a_trial_node_seeds_tpe_and_random_per_trial_and_leaves_grid_and_qmc_alone():
    """Resumable studies (jobs report to their trial) reseed per trial; another app's study keeps the released
    plugin's one seeded sampler for the whole study."""
    from omegaconf import OmegaConf

    from ttm_experiments.search.space import parse
    from ttm_experiments.search.sweeper import OptunaSweeperImpl

    space = parse(OmegaConf.create({"unfreeze.last_n": "choice(0, 1)"}), None, [])

    def built(target: str, seed, pass_trial: bool = True, **extra):
        conf = OmegaConf.create({"_target_": f"optuna.samplers.{target}", "seed": seed, **extra})
        sweeper = OptunaSweeperImpl(conf, "maximize", None, "s", 2, 1)
        sweeper.pass_trial = pass_trial
        return sweeper._sampler(space)[0]

    for target in ("TPESampler", "RandomSampler"):
        seeded = built(target, 3)
        assert seeded.name == target and type(seeded).__name__ == "TrialSeeded"
        assert type(built(target, None)).__name__ == target  # unseeded: nothing to reproduce
        assert type(built(target, 3, pass_trial=False)).__name__ == target
    # one seed for the whole study: the grid's order, QMC's scramble (their trial n follows from n and the storage)
    assert type(built("GridSampler", 3, _partial_=True)) is optuna.samplers.GridSampler
    assert type(built("QMCSampler", 3)) is optuna.samplers.QMCSampler


def _running_trial(tmp_path: Path, job_dir: Path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db", direction="maximize")
    trial = study.ask(fixed_distributions=SPACE)
    trial.set_user_attr(ATTR_OVERRIDES, ["x=0.5", "hydra.sweep.subdir=0"])
    trial.set_user_attr(ATTR_SWEEP, str(job_dir.parent))
    trial.set_user_attr(ATTR_JOB_DIR, str(job_dir))
    return study


def test_a_trial_whose_sweeper_lives_is_left_to_it_and_taken_over_once_it_is_killed(tmp_path):
    job_dir = tmp_path / "sweep" / "0"
    study = _running_trial(tmp_path, job_dir)
    job_dir.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from ttm_experiments.search.adopt import "
            "TrialLocks; TrialLocks().take(0, Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()",
            str(job_dir),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        locks = TrialLocks()
        assert adopt_orphans(study.get_trials(), locks) == []  # the sweeper is alive: not touched
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        orphans = adopt_orphans(study.get_trials(), locks)
        assert [(o.number, o.job_dir, o.overrides, o.finished) for o in orphans] == [
            (0, job_dir, ["x=0.5", "hydra.sweep.subdir=0"], None)
        ]
        # now this process holds it: a third sweeper leaves it alone
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from ttm_experiments."
                "search.adopt import TrialLocks; print(TrialLocks().take(0, Path(sys.argv[1])))",
                str(job_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.stdout.strip() == "False", other.stderr
        assert locks.held() == [0]
        locks.release(0)
        assert locks.held() == [] and locks.take(0, job_dir)  # released: free to take again
        locks.release_all()
    finally:
        holder.kill()


def test_a_trial_asked_but_not_yet_recorded_is_never_adopted(tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    study.ask(fixed_distributions=SPACE)  # RUNNING, no job directory yet: its sweeper is between ask and launch
    assert adopt_orphans(study.get_trials(), TrialLocks()) == []


@pytest.mark.parametrize(
    "marker, expected",
    [
        (None, None),
        ({"finished": False}, None),
        ({"finished": True, "pruned": True}, ("PRUNED", None)),
        ({"finished": True, "pruned": False, "objective": 0.8125}, ("COMPLETE", 0.8125)),
        ({"finished": True, "pruned": False}, None),  # a marker without the objective: the job runs again
    ],
)
def test_a_finished_job_tells_its_recorded_objective(tmp_path, marker, expected):
    if marker is not None:
        resume.save_state(tmp_path / resume.STATE_FILE, {"config": {}, "run_ids": {"parent": "r"}, **marker})
    assert finished_outcome(tmp_path) == expected


def test_the_finished_marker_records_the_objective(tmp_path):
    resume.mark_finished(tmp_path / resume.STATE_FILE, config={"a": 1}, run_id="r", objective=0.75)
    state = torch.load(tmp_path / resume.STATE_FILE, weights_only=False)
    assert state["finished"] and state["objective"] == 0.75
