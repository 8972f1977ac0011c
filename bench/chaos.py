"""Chaos test: SIGKILL runs at random points, resume each by rerunning its command, compare with an
uninterrupted reference of the same config.

    python bench/chaos.py                              # 20 kills, random seed (printed) (make chaos)
    python bench/chaos.py --kills 6 --seed 1 --configs hybrid
    python bench/chaos.py --kill hybrid:step:8        # again, the kill a printed line names

Configs: `hybrid` (schedule=hybrid, tiny: both self-supervised stages, then head, partial and full, 2 epochs
each, 2-3 optimizer steps per epoch) and `optuna` (`-m hparams_search=unfreeze_lr hydra.sweeper.n_trials=2`,
debug=tiny). Each config's reference runs once, uninterrupted, with `TTM_FAULT=count:<file>`
(ttm_experiments/utils/faults.py): the file lists every kill point the config reaches, in order, and the kills are
drawn from it: first one per stage of the hybrid run (its steps and epoch ends), one inside a checkpoint write,
one in MLflow logging, one inside an Optuna trial (asked, not told) and one inside a trial's job, one in a
stage-cache write when the stage cache is there; the rest at random. A kill runs the config's command in a
fresh `paths.runs_dir` with `TTM_FAULT=<point>:<n>`, checks that the process died by SIGKILL (-9), reruns
the SAME command (same hydra.run.dir / hydra.sweep.dir) without TTM_FAULT until it exits 0 (75 = resumable:
again), and compares with the reference:

- every MLflow run FINISHED, one parent per run (per trial), one stage run per stage, as many MLflow models;
- every metric of the parent and stage runs: each (key, step) logged exactly once, the reference's steps,
  the reference's values (exact float equality: CPU runs are deterministic), so the test metrics too;
- an Optuna study: the requested number of trials, all COMPLETE, with the reference's parameters and values.

Prints one line per kill, then `kills survived: S/K`; exits 1 when a kill was not survived. A killed study is
resumed by the sweeper's rerun (`ttm_experiments/search/adopt.py`; README, Reliability).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ttm_experiments.training.signals import RESUMABLE  # noqa: E402
from ttm_experiments.utils.faults import ENV as FAULT_ENV  # noqa: E402
from ttm_experiments.utils.faults import POINTS  # noqa: E402

# one thread per process: references and kills run side by side (--jobs) and must compute the same floats
ENV = {
    **{k: v for k, v in os.environ.items() if k != FAULT_ENV},
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
}
TINY = [
    "debug=tiny",
    "trainer.num_threads=1",
    "trainer.max_batches=2",
    "dataset.windows_per_subject=4",
    "optim.batch_size=8",
]
MAX_RERUNS = 3
EPOCH_POINTS = ("epoch.supervised", "epoch.ssl")


@dataclass(frozen=True)
class Config:
    name: str
    overrides: tuple[str, ...]
    multirun: bool = False
    n_trials: int = 0

    def command(self, root: Path) -> list[str]:
        where = f"hydra.sweep.dir={root / 'sweep'}" if self.multirun else f"hydra.run.dir={root / 'out'}"
        return [
            sys.executable,
            "-m",
            "ttm_experiments.cli.train",
            *(["-m"] if self.multirun else []),
            *TINY,
            *self.overrides,
            f"paths.runs_dir={root / 'runs'}",
            where,
            f"experiment_name=chaos-{self.name}",
        ]


CONFIGS = {
    "hybrid": Config("hybrid", ("schedule=hybrid", "trainer.max_epochs_per_stage=2", "dataset.pretrain_subjects=4")),
    "optuna": Config("optuna", ("hparams_search=unfreeze_lr", "hydra.sweeper.n_trials=2"), multirun=True, n_trials=2),
}


# -- what a store holds after a run ---------------------------------------------------------------------------
@dataclass
class Record:
    """The MLflow runs (per training run: status, metric histories, stages) and the Optuna trials of a root."""

    runs: dict[str, dict] = field(default_factory=dict)  # "run" or "trial <n>" -> {status, metrics, stages}
    trials: dict[int, tuple] = field(default_factory=dict)  # number -> (state, value, params)
    study_runs: list[str] = field(default_factory=list)  # statuses of the MLflow study runs
    models: int = 0  # MLflow LoggedModels of the experiment (one per finished training run)
    problems: list[str] = field(default_factory=list)  # duplicates found while reading


def _histories(client, run, where: str, problems: list[str]) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for key in sorted(run.data.metrics):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        twice = sorted(s for s, n in Counter(s for s, _ in history).items() if n > 1)
        if twice:
            problems.append(f"{where} {key}: steps {twice} logged more than once")
        out[key] = history
    return out


def read_record(cfg: Config, root: Path) -> Record:
    from mlflow.tracking import MlflowClient

    rec = Record()
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"chaos-{cfg.name}")
    runs = client.search_runs([exp.experiment_id], max_results=5000) if exp else []
    parents = [r for r in runs if "stage" not in r.data.tags and r.data.tags.get("ttm.kind") != "study"]
    rec.study_runs = [r.info.status for r in runs if r.data.tags.get("ttm.kind") == "study"]
    rec.models = len(client.search_logged_models(experiment_ids=[exp.experiment_id])) if exp else 0
    for parent in parents:
        trial = parent.data.tags.get("optuna.trial")
        key = f"trial {trial}" if trial is not None else "run"
        if key in rec.runs:
            rec.problems.append(f"two MLflow parent runs for {key}")
            continue
        stages: dict[str, dict] = {}
        for child in (
            r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and "stage" in r.data.tags
        ):
            name = child.data.tags["stage"]
            if name in stages:
                rec.problems.append(f"{key}: two stage runs '{name}'")
                continue
            stages[name] = {
                "status": child.info.status,
                "metrics": _histories(client, child, f"{key} stage {name}", rec.problems),
            }
        rec.runs[key] = {
            "status": parent.info.status,
            "metrics": _histories(client, parent, key, rec.problems),
            "stages": stages,
        }
    if cfg.multirun:
        import optuna

        storage = f"sqlite:///{root / 'runs' / 'optuna.db'}"
        for summary in optuna.get_all_study_summaries(storage):
            for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials:
                rec.trials[t.number] = (t.state.name, t.value, dict(t.params))
    return rec


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _compare_metrics(where: str, ref: dict, got: dict) -> list[str]:
    out = []
    for key in sorted(set(ref) | set(got)):
        if key not in got or key not in ref:
            out.append(f"{where} {key}: {'missing' if key not in got else 'not in the reference'}")
            continue
        ref_steps, got_steps = [s for s, _ in ref[key]], [s for s, _ in got[key]]
        if ref_steps != got_steps:
            out.append(f"{where} {key}: steps {got_steps}, reference {ref_steps}")
        elif not all(_same(a, b) for (_, a), (_, b) in zip(ref[key], got[key])):
            diff = next((s, a, b) for (s, a), (_, b) in zip(ref[key], got[key]) if not _same(a, b))
            out.append(f"{where} {key}: step {diff[0]} is {diff[2]!r}, reference {diff[1]!r}")
    return out


def compare(ref: Record, got: Record, cfg: Config) -> list[str]:
    """What differs from the reference (empty: the kill was survived)."""
    out = list(got.problems)
    for key in sorted(set(ref.runs) | set(got.runs)):
        if key not in got.runs or key not in ref.runs:
            out.append(f"{key}: {'no MLflow run' if key not in got.runs else 'an MLflow run the reference lacks'}")
            continue
        r, g = ref.runs[key], got.runs[key]
        if g["status"] != "FINISHED":
            out.append(f"{key}: MLflow run {g['status']}")
        out += _compare_metrics(key, r["metrics"], g["metrics"])
        if sorted(r["stages"]) != sorted(g["stages"]):
            out.append(f"{key}: stage runs {sorted(g['stages'])}, reference {sorted(r['stages'])}")
        for name in set(r["stages"]) & set(g["stages"]):
            if g["stages"][name]["status"] != "FINISHED":
                out.append(f"{key} stage {name}: MLflow run {g['stages'][name]['status']}")
            out += _compare_metrics(f"{key} stage {name}", r["stages"][name]["metrics"], g["stages"][name]["metrics"])
    if got.models != ref.models:
        out.append(f"{got.models} MLflow models logged, reference {ref.models}")
    if cfg.multirun:
        states = Counter(s for s, _, _ in got.trials.values())
        if len(got.trials) != cfg.n_trials or states["COMPLETE"] != cfg.n_trials:
            out.insert(0, f"study: {len(got.trials)} trials ({dict(states)}), {cfg.n_trials} COMPLETE requested")
        for number in sorted(set(ref.trials) | set(got.trials)):
            r, g = ref.trials.get(number), got.trials.get(number)
            if r != g:
                out.append(
                    f"trial {number}: {g[0] + ' ' + str(g[1]) if g else 'missing'}"
                    f"{' ' + str(g[2]) if g else ''}, reference {r[0] + ' ' + str(r[1]) if r else 'none'}"
                )
        if any(s != "FINISHED" for s in got.study_runs) or len(got.study_runs) != len(ref.study_runs):
            out.append(f"MLflow study runs {got.study_runs}, reference {ref.study_runs}")
    return out


# -- running ------------------------------------------------------------------------------------------------
def run(cmd: list[str], log: Path, fault: str | None = None, timeout: float = 900) -> int:
    env = {**ENV, FAULT_ENV: fault} if fault else ENV
    with open(log, "w") as f:
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode


def _tail(log: Path, n: int = 3) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-600:]


@dataclass
class Reference:
    cfg: Config
    record: Record
    events: list[str]  # every kill point the run reached, in order
    seconds: float


def reference(cfg: Config, root: Path) -> Reference:
    root.mkdir(parents=True)
    events_file = root / "points.txt"
    t0 = time.perf_counter()
    rc = run(cfg.command(root), root / "run.log", fault=f"count:{events_file}")
    if rc != 0:
        raise RuntimeError(f"the reference run of {cfg.name} failed (exit {rc}): {_tail(root / 'run.log')}")
    events = events_file.read_text().split()
    unknown = set(events) - set(POINTS)
    if unknown:
        raise RuntimeError(f"{cfg.name}: points {unknown} are not in ttm_experiments.utils.faults.POINTS")
    ref = Reference(cfg, read_record(cfg, root), events, time.perf_counter() - t0)
    if ref.record.problems:
        raise RuntimeError(f"the reference of {cfg.name} itself has problems: {ref.record.problems}")
    return ref


@dataclass(frozen=True)
class Kill:
    config: str
    point: str
    n: int  # the n-th time the point is reached
    where: str  # what the run was doing, read from the reference
    stage: str | None = None  # the stage whose step or epoch end it strikes (None: between steps)

    @property
    def fault(self) -> str:
        return f"{self.point}:{self.n}"


def kill_points(ref: Reference) -> list[Kill]:
    """Every kill a reference offers, with where it strikes: in `[trial <t>] <stage> epoch <e>` (a step or the
    epoch's end; epochs counted across stages, stages read from the reference's stage runs), `before` the first
    epoch (setup), `after` an epoch (its logging, the stage's probe and files, the test after the last one), or
    `trial <t> told`."""
    runs = sorted(ref.record.runs, key=lambda k: int(k.split()[1]) if k.startswith("trial ") else -1)
    epochs = []  # per run, in launch order: the stage of each epoch (step 1, 2, ...)
    for key in runs:
        stages = ref.record.runs[key]["stages"]
        by_step = {s: name for name, st in stages.items() for hist in st["metrics"].values() for s, _ in hist}
        epochs.append([by_step[s] for s in sorted(by_step)])
    kills, seen, ended, run_i = [], Counter(), 0, 0
    for point in ref.events:
        seen[point] += 1
        prefix = f"{runs[run_i]} " if runs[run_i] != "run" else ""
        stage = None
        if point == "optuna.trial":
            where = f"{prefix}told"
            run_i, ended = min(run_i + 1, len(runs) - 1), 0
        elif (point == "step" or point in EPOCH_POINTS) and ended < len(epochs[run_i]):
            stage = epochs[run_i][ended]
            where = f"{prefix}in {stage} epoch {ended + 1}"
            ended += point in EPOCH_POINTS
        elif ended == 0:
            where = f"{prefix}before {epochs[run_i][0]} epoch 1"
        else:
            where = f"{prefix}after {epochs[run_i][ended - 1]} epoch {ended}"
        kills.append(Kill(ref.cfg.name, point, seen[point], where, stage))
    return kills


def choose(refs: dict[str, Reference], count: int, rng: random.Random) -> list[Kill]:
    """One kill per required kind (as many as `count` allows, in random order), the rest at random."""
    pool = [k for ref in refs.values() for k in kill_points(ref)]
    groups: list[list[Kill]] = []
    if "hybrid" in refs:
        hybrid = [k for k in pool if k.config == "hybrid" and k.stage is not None]
        groups += [[k for k in hybrid if k.stage == stage] for stage in dict.fromkeys(k.stage for k in hybrid)]
    groups += [
        [k for k in pool if k.point == "checkpoint.write"],
        [k for k in pool if k.point == "mlflow.log"],
        [k for k in pool if k.point == "optuna.trial"],
        [k for k in pool if k.config == "optuna" and k.stage is not None],  # inside a trial's job
        [k for k in pool if k.point == "stage_cache.write"],
    ]
    groups = [g for g in groups if g]
    rng.shuffle(groups)
    chosen: list[Kill] = []
    for candidates in groups[:count]:
        chosen.append(rng.choice([k for k in candidates if k not in chosen]))
    rest = [k for k in pool if k not in chosen]
    chosen += rng.sample(rest, min(count - len(chosen), len(rest)))
    return chosen


def named(refs: dict[str, Reference], specs: list[str]) -> list[Kill]:
    """`--kill <config>:<point>:<n>`: the kills a printed line names, to reproduce them."""
    pool = {f"{k.config}:{k.fault}": k for ref in refs.values() for k in kill_points(ref)}
    missing = [s for s in specs if s not in pool]
    if missing:
        raise SystemExit(f"--kill {missing}: not points the reference reached (see its points.txt)")
    return [pool[s] for s in specs]


@dataclass
class Outcome:
    kill: Kill
    ok: bool
    detail: str
    seconds: float


def chaos(kill: Kill, ref: Reference, root: Path) -> Outcome:
    """Kill, rerun the same command until it finishes, compare with the reference."""
    t0 = time.perf_counter()
    root.mkdir(parents=True)
    cmd = ref.cfg.command(root)

    def outcome(ok: bool, detail: str) -> Outcome:
        return Outcome(kill, ok, detail, time.perf_counter() - t0)

    rc = run(cmd, root / "killed.log", fault=kill.fault)
    if rc != -signal.SIGKILL:
        return outcome(False, f"the armed run exited {rc}, not -9 (SIGKILL): {_tail(root / 'killed.log')}")
    codes, failed = [], []
    for attempt in range(1, MAX_RERUNS + 1):
        log = root / f"rerun-{attempt}.log"
        codes.append(run(cmd, log))
        if codes[-1] == 0:
            break
        if codes[-1] != RESUMABLE:
            failed.append(f"rerun {attempt} exited {codes[-1]}: {_tail(log, 1)}")
            break
    else:
        failed.append(f"not finished after {MAX_RERUNS} reruns (exit statuses {codes})")
    problems = failed + compare(ref.record, read_record(ref.cfg, root), ref.cfg)
    reruns = f"{len(codes)} rerun{'s' if len(codes) > 1 else ''}"
    # a kill inside an atomic write leaves its temporary file; the next write of that file (or the resumed run, in
    # its own directory) removes it, so one still here is a defect of the cleanup: said, not failed
    left = sorted(p.name for p in root.rglob(".*.tmp"))
    litter = f"; {len(left)} temporary file{'s' if len(left) > 1 else ''} left ({', '.join(left)})" if left else ""
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        return outcome(False, f"killed -9, {reruns}: " + "; ".join(problems[:4]) + more + litter)
    return outcome(True, f"killed -9, {reruns}, identical to the reference{litter}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, help="default: random (printed)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--jobs", type=int, default=2, help="scenarios run side by side (one thread each)")
    parser.add_argument("--keep", help="write below this directory (kept) instead of a temporary one")
    parser.add_argument(
        "--kill",
        action="append",
        default=[],
        metavar="CONFIG:POINT:N",
        help="these kills instead of random ones (repeatable), e.g. hybrid:step:8",
    )
    args = parser.parse_args(argv)
    names = args.configs.split(",")
    if args.kill:  # only the configs the named kills need
        names = list(dict.fromkeys(k.split(":", 1)[0] for k in args.kill))
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or args.kills < 1 or args.jobs < 1:
        parser.error(f"--configs {unknown} not in {list(CONFIGS)}" if unknown else "--kills and --jobs must be >= 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    root = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="ttm-chaos-"))
    t0 = time.perf_counter()
    print(
        f"chaos: {len(args.kill) or args.kills} kills, seed {seed}, configs {names}, {args.jobs} at a time, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, below {root}",
        flush=True,
    )
    with ThreadPoolExecutor(args.jobs) as pool:
        refs = dict(zip(names, pool.map(lambda n: reference(CONFIGS[n], root / n / "reference"), names)))
        for name, ref in refs.items():
            print(
                f"reference {name}: {len(ref.events)} kill points ({dict(Counter(ref.events))}), {ref.seconds:.0f} s",
                flush=True,
            )
        kills = named(refs, args.kill) if args.kill else choose(refs, args.kills, random.Random(seed))
        futures = [
            pool.submit(chaos, k, refs[k.config], root / k.config / f"kill-{i:02d}") for i, k in enumerate(kills)
        ]
        outcomes = []
        for i, future in enumerate(futures):
            o = future.result()
            outcomes.append(o)
            print(
                f"[{i + 1:2d}/{len(kills)}] {o.kill.config:7s} {o.kill.fault:20s} {o.kill.where:30s} "
                f"{'OK  ' if o.ok else 'FAIL'} {o.seconds:4.0f} s  {o.detail}",
                flush=True,
            )
    survived = sum(o.ok for o in outcomes)
    per = {
        n: f"{sum(o.ok for o in outcomes if o.kill.config == n)}/{sum(o.kill.config == n for o in outcomes)}"
        for n in names
    }
    print(
        f"kills survived: {survived}/{len(outcomes)}  ({', '.join(f'{n} {v}' for n, v in per.items())})  seed {seed}"
        f"  wall {time.perf_counter() - t0:.0f} s  load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        flush=True,
    )
    if survived == len(outcomes) and not args.keep:
        shutil.rmtree(root)
    elif survived < len(outcomes):
        print(f"logs and stores of every kill: {root}/<config>/kill-NN", flush=True)
    return 0 if survived == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
