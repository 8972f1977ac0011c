"""`make bench`: the suite's training loop against the limit, `transformers.Trainer`, start-up, search, scaling.

    python bench/bench.py                 # everything (< 10 min on 2 cores), updates BENCHMARKS.md
    python bench/bench.py --quick         # shorter (~4 min): fewer repeats, smaller data, no compile, no 64k
    python bench/bench.py --threads 1     # torch threads (a loaded machine: 1 thread is far steadier than 2)
    python bench/bench.py --items loop,eval
    python bench/bench.py --gpu           # items 1-3 on CUDA, bf16 autocast off and on (bench/gpu.sh)
    python bench/bench.py --merge-gpu runs/bench/gpu_bench.json   # put a GPU run into BENCHMARKS.md

Everything that is compared runs in this one process, interleaved repeat by repeat (machines are noisy and
absolute times drift), and the ratios are medians over the repeats of ratios measured side by side.
Items: 1 loop (suite vs bare loop), 2 hf (vs `transformers.Trainer`), 3 eval, compile (beyond the
eager limit), 4 startup, 5 search, 6 scaling, 7 memory; dropout (FastDropout vs stock nn.Dropout vs
dropout 0.0, bench/dropout.py's step). See workloads.py for exactly what each loop does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the package and workloads.py, installed or not
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
ITEMS = ("loop", "eval", "dropout", "stage_cache", "compile", "startup", "search", "scaling", "memory")
HEAVY = ("torch", "sklearn", "scipy", "pandas", "mlflow", "tsfm_public", "transformers", "optuna", "neurokit2")


def log(msg: str) -> None:
    print(msg, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine(threads: int | None) -> dict:
    import torch

    cpu = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    info = {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_start": load_average(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


class Config:
    def __init__(self, quick: bool, gpu: bool = False):
        self.quick = quick
        if gpu:  # an H100 is ~30x a 2-core CPU: more data per timing, fewer repeats, all under 4 minutes
            self.n_train, self.n_val, self.n_eval, self.epochs, self.repeats = 8192, 2048, 16384, 2, 3
        elif quick:
            self.n_train, self.n_val, self.n_eval, self.epochs, self.repeats = 640, 256, 1024, 2, 2
        else:  # the synthetic data set's split: 60 subjects x 40 windows, 3 folds of 5 train, 1 validates
            self.n_train, self.n_val, self.n_eval, self.epochs, self.repeats = 1440, 480, 2048, 2, 3
        self.scaling_sizes = (1_000, 4_000, 16_000) if quick else (1_000, 4_000, 16_000, 64_000)
        self.search_trials = 4 if quick else 6
        self.startup_repeats = 1 if quick else 3


# ------------------------------------------------------------------------------------------------------
# items 1-3 and compile: in this process
# ------------------------------------------------------------------------------------------------------


def bench_loop(
    cfg: Config, device, store: Path, amp: bool = False, with_hf: bool = True, label: str = ""
) -> list[dict]:
    """Items 1 and 2: bare loop, suite and transformers.Trainer on the same data, interleaved per repeat."""
    import workloads as w

    data = w.Data(w.random_windows(cfg.n_train, 1024, 0), w.random_windows(cfg.n_val, 1024, 1))
    suite = w.SuiteRunner(store, "bench-suite")
    hf_missing = _hf_missing()
    if with_hf and hf_missing:
        log(f"  transformers.Trainer: skipped, {hf_missing}")
        with_hf = False
    if with_hf:
        w.prepare_hf_tracking(store)
    w.run_bare(w.Data(w.random_windows(128, 1024, 2), data.val), 1, device, amp)  # warm-up (allocator, kernels)
    runs: dict[str, list] = {k: [] for k in ("bare", "suite", "hf", "bare_head", "suite_head")}
    for r in range(cfg.repeats):
        order = ["bare", "suite", "hf"] if r % 2 == 0 else ["hf", "suite", "bare"]
        for what in order:
            if what == "bare":
                t = w.run_bare(data, cfg.epochs, device, amp)
            elif what == "suite":
                t = suite.run(data, cfg.epochs, device, amp)
            elif with_hf:
                try:
                    t = w.run_hf(data, cfg.epochs, device, amp)
                except Exception as err:  # keep the suite-vs-bare numbers if transformers.Trainer fails here
                    hf_missing = f"transformers.Trainer failed: {type(err).__name__}: {str(err)[:200]}"
                    log(f"  {hf_missing}")
                    with_hf = False
                    runs["hf"].clear()
                    continue
            else:
                continue
            runs[what].append(t.samples_per_s)
            log(f"  {label}repeat {r + 1}/{cfg.repeats} {what:5s} {t.samples_per_s:8.1f} samples/s  ({t.wall_s:.1f} s)")
        for what in ["bare_head", "suite_head"] if r % 2 == 0 else ["suite_head", "bare_head"]:
            t = (
                w.run_bare(data, cfg.epochs, device, amp, scope="head")
                if what == "bare_head"
                else suite.run(data, cfg.epochs, device, amp, scope="head")
            )
            runs[what].append(t.samples_per_s)
            log(
                f"  {label}repeat {r + 1}/{cfg.repeats} {what:10s} {t.samples_per_s:8.1f} samples/s  ({t.wall_s:.1f} s)"
            )
    ratio = lambda a, b: median([x / y for x, y in zip(runs[a], runs[b])])
    shape = f"ttm_1024, batch 64, {cfg.n_train} train + {cfg.n_val} val windows, {cfg.epochs} epochs"
    rows = [
        {
            "item": "1",
            "what": f"{label}training, full stage ({shape})",
            "suite": median(runs["suite"]),
            "reference": median(runs["bare"]),
            "reference_name": "bare loop",
            "ratio": ratio("suite", "bare"),
            "target": 0.95,
            "unit": "samples/s",
        }
    ]
    if with_hf and runs["hf"]:
        rows.append(
            {
                "item": "2",
                "what": f"{label}training vs transformers.Trainer "
                "(same model, data, epochs, eval per epoch, MLflow on)",
                "suite": median(runs["suite"]),
                "reference": median(runs["hf"]),
                "reference_name": "transformers.Trainer",
                "ratio": ratio("suite", "hf"),
                "target": 1.0,
                "unit": "samples/s",
            }
        )
    if hf_missing:
        rows.append({"item": "2", "what": f"{label}training vs transformers.Trainer", "skipped": hf_missing})
    rows.append(
        {
            "item": "1b",
            "what": f"{label}head-only stage (backbone frozen; suite caches its outputs, bare runs it per step)",
            "suite": median(runs["suite_head"]),
            "reference": median(runs["bare_head"]),
            "reference_name": "bare loop, frozen backbone",
            "ratio": ratio("suite_head", "bare_head"),
            "target": None,
            "unit": "samples/s",
        }
    )
    return rows


def _hf_missing() -> str:
    """Why `transformers.Trainer` cannot run here, or '' (it needs accelerate, which the suite does not)."""
    import importlib.util

    missing = [m for m in ("transformers", "accelerate") if importlib.util.find_spec(m) is None]
    return (
        f"{' and '.join(missing)} not installed (pip install -c requirements.lock {' '.join(missing)})"
        if missing
        else ""
    )


def bench_eval(cfg: Config, device, store: Path, amp: bool = False, label: str = "") -> list[dict]:
    """Item 3: `Trainer.evaluate` (inference mode, batch 256, metrics and loss) vs a bare inference loop."""
    import workloads as w

    data = w.Data(w.random_windows(128, 1024, 0), w.random_windows(128, 1024, 1))
    x = w.random_windows(cfg.n_eval, 1024, 3)
    suite = w.SuiteRunner(store, "bench-eval")
    w.run_bare_eval(w.random_windows(256, 1024, 4), device, amp)  # warm-up
    suite.evaluate(data, w.random_windows(256, 1024, 4), device, amp)
    bare, ours = [], []
    for r in range(cfg.repeats):
        pair = [
            ("bare", lambda: w.run_bare_eval(x, device, amp)),
            ("suite", lambda: suite.evaluate(data, x, device, amp)),
        ]
        for what, fn in pair if r % 2 == 0 else pair[::-1]:
            t = fn()
            (bare if what == "bare" else ours).append(t.samples_per_s)
            log(f"  {label}repeat {r + 1}/{cfg.repeats} eval {what:5s} {t.samples_per_s:8.1f} samples/s")
    return [
        {
            "item": "3",
            "what": f"{label}evaluation, {cfg.n_eval} windows, batch 256, inference mode (suite: + metrics, loss)",
            "suite": median(ours),
            "reference": median(bare),
            "reference_name": "bare inference loop",
            "ratio": median([a / b for a, b in zip(ours, bare)]),
            "target": 0.95,
            "unit": "samples/s",
        }
    ]


def bench_dropout(cfg: Config, device) -> list[dict]:
    """a ttm_1024 training step (batch 64) with FastDropout(0.2), stock nn.Dropout(0.2) and dropout 0.0,
    the three from the same weights side by side in this process (bench/dropout.py's measurement)."""
    import argparse as ap

    import dropout
    import workloads as w

    spec = w.TTM_1024
    args = ap.Namespace(
        device=str(device),
        batch=64,
        context=spec.context_length,
        patch=spec.patch_length,
        d_model=spec.d_model,
        levels=spec.adaptive_patching_levels,
        layers=spec.num_layers,
        dropout=spec.dropout,
        repeats=3 if cfg.quick else 5,
        steps=3,
    )
    result = dropout.bench_step(args)
    times = result["s_per_step_by_repeat"]
    rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
    log("  ms per step (median): " + ", ".join(f"{k} {ms:.1f}" for k, ms in result["ms_per_step"].items()))

    def speed(a: str, b: str) -> float:  # how much faster a runs than b: median over repeats of time_b / time_a
        return median([tb / ta for ta, tb in zip(times[a], times[b])])

    what = f"training step, ttm_1024, batch 64, {args.repeats} repeats x {args.steps} steps"
    import dropout_stage

    pairs, epochs = (1, 2) if cfg.quick else (3, 3)
    stage = dropout_stage.measure(pairs, epochs)
    log(f"  full stage through the CLI: dropout 0.2 {stage['seconds']['0.2']} s, 0.0 {stage['seconds']['0.0']} s")
    return [
        {
            "item": "12.1",
            "what": f"a whole `ttm-train schedule=full` stage ({epochs} epochs, MLflow stage run), "
            f"{pairs} pairs: time with dropout 0.2 (FastDropout) / with 0.0 (target: within 1.15x)",
            "suite": statistics.median(stage["seconds"]["0.2"]),
            "reference": statistics.median(stage["seconds"]["0.0"]),
            "reference_name": "backbone.dropout=0.0",
            "ratio": stage["ratio"],
            "target": 1.15,
            "unit": "s",
            "lower_is_better": True,
        },
        {
            "item": "12.1",
            "what": f"{what}: FastDropout(0.2) vs dropout 0.0 (target: within 1.15x, i.e. >= 0.87)",
            "suite": rate["fast"],
            "reference": rate["off"],
            "reference_name": "dropout 0.0",
            "ratio": speed("fast", "off"),
            "target": 0.87,
            "unit": "samples/s",
        },
        {
            "item": "12.1",
            "what": f"{what}: FastDropout(0.2) vs stock nn.Dropout(0.2)",
            "suite": rate["fast"],
            "reference": rate["stock"],
            "reference_name": "stock nn.Dropout",
            "ratio": speed("fast", "stock"),
            "target": None,
            "unit": "samples/s",
        },
    ]


def bench_stage_cache() -> list[dict]:
    """an 8-job schedule=hybrid grid over unfreeze.last_n x optim.lr, uncached then cached, on the small
    grid of `bench/stage_cache.py --quick` (the default-size grid: `python bench/stage_cache.py`, ~25 min)."""
    import stage_cache as sc

    with tempfile.TemporaryDirectory(prefix="bench-stage-cache-") as tmp:
        walls, found = {}, {}
        for cached in (False, True):
            runs = Path(tmp) / ("on" if cached else "off") / "runs"
            runs.parent.mkdir(parents=True)
            walls[cached], found[cached] = sc.run_grid(runs, cached, sc.QUICK)
    same = found[True].keys() == found[False].keys() and all(
        found[True][j]["test"] == found[False][j]["test"] for j in found[False]
    )
    log(f"  uncached {walls[False]:.1f} s, cached {walls[True]:.1f} s; test metrics identical: {same}")
    return [
        {
            "item": "12.2",
            "what": "8-job schedule=hybrid grid (last_n x lr, --quick sizes): cached vs uncached wall; "
            f"test metrics identical: {'yes' if same else 'NO'} (the target <= 0.55 is for the default-size grid, "
            "`python bench/stage_cache.py`: item 10)",
            "suite": walls[True],
            "reference": walls[False],
            "reference_name": "trainer.stage_cache=false",
            "ratio": walls[True] / walls[False],
            "target": None,
            "unit": "s",
            "lower_is_better": True,
        }
    ]


def bench_compile(
    cfg: Config, device, store: Path, amp: bool = False, label: str = "", deadline: float | None = None
) -> list[dict]:
    """Beyond the eager limit: torch.compile on the training and evaluation steps, against the eager bare loop.

    Sizes are multiples of the batch sizes (no ragged last batch: one graph for training, one for
    evaluation). Compile time is reported apart; throughput is over the epochs after the first."""
    import workloads as w

    n_train = (cfg.n_train // 64) * 64
    n_val = max(256, (cfg.n_val // 256) * 256)
    data = w.Data(w.random_windows(n_train, 1024, 0), w.random_windows(n_val, 1024, 1))
    epochs = cfg.epochs + 1
    suite = w.SuiteRunner(store, "bench-compile")
    out = {}
    for what, fn in (
        ("eager", lambda: w.run_bare(data, epochs, device, amp)),
        ("bare_compiled", lambda: w.run_bare(data, epochs, device, amp, compile=True)),
        ("suite_compiled", lambda: suite.run(data, epochs, device, amp, compile=True)),
        ("eager_again", lambda: w.run_bare(data, epochs, device, amp)),
    ):
        if deadline is not None and time.perf_counter() > deadline:
            log(f"  {label}compile: {what} skipped (time budget)")
            continue
        try:
            t = fn()
        except Exception as err:  # e.g. no compiler toolchain: report it, keep the rest
            log(f"  {label}{what} failed: {type(err).__name__}: {str(err)[:300]}")
            return [{"item": "C", "what": f"{label}torch.compile", "error": f"{type(err).__name__}: {str(err)[:200]}"}]
        out[what] = t
        log(f"  {label}{what:15s} first epoch {t.epoch_s[0]:6.1f} s, then {t.steady(n_train):8.1f} samples/s")
    if "eager" not in out:
        return []
    eager = median([out[k].steady(n_train) for k in ("eager", "eager_again") if k in out])
    rows = []
    for key, name in (("bare_compiled", "bare loop, torch.compile"), ("suite_compiled", "suite, trainer.compile=true")):
        if key in out:
            t = out[key]
            rows.append(
                {
                    "item": "C",
                    "what": f"{label}{name} (ttm_1024, batch 64, {n_train} windows; compile: first epoch "
                    f"{t.epoch_s[0]:.0f} s vs {out['eager'].epoch_s[0]:.0f} s eager)",
                    "suite": t.steady(n_train),
                    "reference": eager,
                    "reference_name": "eager bare loop",
                    "ratio": t.steady(n_train) / eager,
                    "target": None,
                    "unit": "samples/s",
                    "compile_first_epoch_s": t.epoch_s[0],
                }
            )
    return rows


# ------------------------------------------------------------------------------------------------------
# items 4-7: subprocesses
# ------------------------------------------------------------------------------------------------------

_FIRST_STEP = r"""
import os, sys, time
import torch
def _first_step(optimizer, args, kwargs):
    print("BENCH_FIRST_STEP", time.time(), flush=True)
    os._exit(0)
from torch.optim.optimizer import register_optimizer_step_post_hook
register_optimizer_step_post_hook(_first_step)
sys.argv = ["ttm-train", *sys.argv[1:]]
from ttm_experiments.cli.train import main
main()
"""

_MODULES = r"""
import atexit, sys
HEAVY = %r
atexit.register(lambda: print("BENCH_MODULES", ",".join(m for m in HEAVY if m in sys.modules) or "-", flush=True))
import runpy
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__")
""" % (HEAVY,)


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _script(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    module = {"ttm-train": "ttm_experiments.cli.train", "ttm-inspect": "ttm_experiments.cli.inspect_blocks"}[name]
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


def _run_measured(cmd: list[str], env: dict, timeout: float) -> tuple[float, float, str, int]:
    """Wall seconds, peak RSS (MiB, this child alone: wait4), output, return code."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        return wall, usage.ru_maxrss / 1024, out.read(), proc.returncode


def _train_overrides(runs: Path, threads: int | None) -> list[str]:
    over = [
        f"paths.runs_dir={runs}",
        f"paths.cache_dir={ROOT / 'runs' / 'cache'}",
        "trainer.progress=false",
        "experiment_name=bench",
    ]
    if threads:
        over.append(f"trainer.num_threads={threads}")
    return over


def _prepare_store(runs: Path) -> None:
    """Create the MLflow store first, as a user's second run finds it (its creation costs seconds)."""
    from mlflow.tracking import MlflowClient

    runs.mkdir(parents=True, exist_ok=True)
    MlflowClient(f"sqlite:///{runs}/mlflow.db").search_experiments()


def bench_memory(cfg: Config, threads: int | None) -> list[dict]:
    """Item 7: peak RSS of `ttm-train` (the `make train` config, capped at one epoch per stage)."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        _prepare_store(runs)
        cmd = _script("ttm-train") + _train_overrides(runs, threads) + ["trainer.max_epochs_per_stage=1"]
        wall, rss, out, rc = _run_measured(cmd, _env(), timeout=600)
    if rc != 0:
        log(out[-3000:])
        return [{"item": "7", "what": "make train peak RSS", "error": f"ttm-train exited {rc}"}]
    log(f"  ttm-train (1 epoch per stage): {wall:.1f} s, peak RSS {rss:.0f} MiB")
    return [
        {
            "item": "7",
            "what": "peak RSS of `ttm-train trainer.max_epochs_per_stage=1` (make train's config: "
            "ttm_1024, progressive, synthetic data; one epoch per stage)",
            "suite": rss,
            "unit": "MiB",
            "wall_s": wall,
        }
    ]


def bench_startup(cfg: Config, threads: int | None) -> list[dict]:
    """Item 4: wall time to the first optimizer step of `ttm-train`, and of `ttm-train --cfg job` / `ttm-inspect`."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        _prepare_store(runs)
        over = _train_overrides(runs, threads)
        firsts = []
        for _ in range(cfg.startup_repeats):
            t0 = time.time()
            wall, rss, out, rc = _run_measured([sys.executable, "-c", _FIRST_STEP, *over], _env(), timeout=600)
            match = re.search(r"BENCH_FIRST_STEP ([\d.]+)", out)
            if not match:
                log(out[-3000:])
                return [{"item": "4", "what": "start-up", "error": f"no training step (exit {rc})"}]
            firsts.append(float(match.group(1)) - t0)
            log(f"  first training step after {firsts[-1]:.1f} s")
        rows.append(
            {
                "item": "4",
                "what": "`ttm-train` (default config, cached data, existing MLflow store): "
                "process start to the end of the first optimizer step",
                "suite": median(firsts),
                "unit": "s",
            }
        )
        for name, args in (("ttm-train", ["--cfg", "job"]), ("ttm-inspect", [f"paths.runs_dir={runs}"])):
            walls = []
            for _ in range(cfg.startup_repeats):
                wall, _, out, rc = _run_measured(_script(name) + args, _env(), timeout=300)
                if rc != 0:
                    log(out[-2000:])
                walls.append(wall)
            module = {"ttm-train": "ttm_experiments.cli.train", "ttm-inspect": "ttm_experiments.cli.inspect_blocks"}[
                name
            ]
            _, _, out, _ = _run_measured([sys.executable, "-c", _MODULES, module, *args], _env(), timeout=300)
            match = re.search(r"BENCH_MODULES (\S+)", out)
            modules = match.group(1).replace(",", ", ") if match else "?"
            log(f"  {name} {' '.join(args)}: {median(walls):.2f} s; heavy modules imported: {modules}")
            shown = f"{name} --cfg job" if name == "ttm-train" else name
            rows.append(
                {
                    "item": "4",
                    "what": f"`{shown}` wall time (heavy imports: {modules})",
                    "suite": median(walls),
                    "unit": "s",
                }
            )
    return rows


def bench_search(cfg: Config, threads: int | None) -> list[dict]:
    """Item 5: one Optuna study with the median pruner and one without, same space, seed and trial count."""
    if (
        not (ROOT / "ttm_experiments" / "search").is_dir()
        or not (ROOT / "hydra_plugins" / "ttm_optuna_sweeper").is_dir()
    ):
        log("  search: skipped, ttm_experiments/search or hydra_plugins/ttm_optuna_sweeper is missing")
        return [{"item": "5", "what": "search efficiency", "skipped": "the search package is not there"}]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        for pruned in (True, False):
            name = "bench-pruned" if pruned else "bench-unpruned"
            pruner = (
                [
                    "hydra.sweeper.pruner.type=median",
                    "hydra.sweeper.pruner.n_startup_trials=2",
                    "hydra.sweeper.pruner.n_warmup_steps=2",
                ]
                if pruned
                else ["hydra.sweeper.pruner=none"]
            )
            cmd = (
                _script("ttm-train")
                + [
                    "-m",
                    "hparams_search=unfreeze_lr",
                    "debug=tiny",
                    f"paths.runs_dir={runs}",
                    f"paths.cache_dir={ROOT / 'runs' / 'cache'}",
                    "dataset.n_subjects=30",
                    "dataset.windows_per_subject=20",
                    "trainer.max_epochs_per_stage=4",
                    f"experiment_name={name}",
                    f"hydra.sweeper.study_name={name}",
                    f"hydra.sweeper.n_trials={cfg.search_trials}",
                    "hydra.sweeper.sampler.seed=0",
                    "hydra.sweeper.sampler.n_startup_trials=3",
                    *pruner,
                ]
                + ([f"trainer.num_threads={threads}"] if threads else [])
            )
            wall, _, out, rc = _run_measured(cmd, _env(), timeout=400)
            if rc != 0:
                log(out[-3000:])
                last = out.strip().splitlines()[-1][:200] if out.strip() else ""
                reason = f"`ttm-train -m hparams_search=unfreeze_lr` exited {rc}: {last}"
                log(f"  search: skipped, {reason}")
                return [{"item": "5", "what": "search efficiency", "skipped": reason}]
            results[name] = _study_summary(f"sqlite:///{runs}/optuna.db", name) | {"wall_s": wall}
            log(f"  {name}: {results[name]}")
    p, u = results["bench-pruned"], results["bench-unpruned"]
    return [
        {
            "item": "5",
            "what": f"Optuna study `hparams_search=unfreeze_lr`, {cfg.search_trials} trials, debug=tiny "
            f"(ttm_tiny) on 30 subjects x 20 windows, 4 epochs per stage (12 per trial), TPE seed 0: median pruner "
            f"(after 2 complete trials, from epoch 3; {p['pruned']} trials pruned) vs none",
            "suite": p["epochs"],
            "reference": u["epochs"],
            "reference_name": "epochs without pruning",
            "ratio": p["epochs"] / u["epochs"] if u["epochs"] else float("nan"),
            "unit": "epochs trained",
            "best_pruned": p["best"],
            "best_unpruned": u["best"],
            "wall_pruned_s": p["wall_s"],
            "wall_unpruned_s": u["wall_s"],
        }
    ]


def _study_summary(storage: str, name: str) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "trials": len(trials),
        "complete": len(done),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "best": max((t.value for t in done), default=float("nan")),
    }


# -- item 6: one subprocess per size ------------------------------------------------------------------


def bench_scaling(cfg: Config, threads: int | None) -> list[dict]:
    """Item 6: one training epoch (+ validation) of the suite's Trainer on memory-mapped windows, per size.

    ttm_tiny (context 128), so that 64k windows fit the time budget; the data is a read-only `np.memmap`
    (as the vitaldb and windows loaders return it). Each size runs in its own process, which samples itself
    every 50 ms: peak RSS (VmHWM), its anonymous part (RssAnon: what the process allocated), and the resident
    pages of its mappings of the data files (/proc/self/smaps: file-backed, the kernel drops them at will).
    Shared libraries are file-backed too: torch's CUDA build alone maps ~580 MB."""
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in cfg.scaling_sizes:
            paths = []
            for split, rows_n, seed in (("train", n, 0), ("val", max(n // 4, 64), 1)):
                path = Path(tmp) / f"{split}-{n}.npy"
                mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows_n, 1, 128))
                rng = np.random.default_rng(seed)
                for start in range(0, rows_n, 8192):
                    block = mm[start : start + 8192]
                    block[...] = 150 + 3 * rng.standard_normal(block.shape, dtype=np.float32)
                mm.flush()
                del mm
                paths.append(str(path))
            cmd = [sys.executable, str(Path(__file__)), "--worker", "scaling", "--store", tmp, *paths]
            if threads:
                cmd += ["--threads", str(threads)]
            wall, rss, out, rc = _run_measured(cmd, _env(), timeout=600)
            match = re.search(r"BENCH_RESULT (.*)", out)
            if rc != 0 or not match:
                log(out[-3000:])
                rows.append({"item": "6", "what": f"scaling {n}", "error": f"worker exited {rc}"})
                continue
            res = json.loads(match.group(1))
            res["n"] = n
            log(
                f"  {n:6d} windows: epoch {res['epoch_s']:.2f} s ({1000 * res['epoch_s'] / n:.2f} ms per window), "
                f"peak RSS {res['peak_rss_mb']:.0f} MiB (anonymous {res['peak_anon_mb']:.0f}, of the data file "
                f"{res['peak_data_mb']:.0f}), data {res['data_mb']:.0f} MiB"
            )
            rows.append({"item": "6", **res})
    return rows


def scaling_worker(args) -> None:
    import numpy as np
    import torch
    import workloads as w

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    train_path, val_path = args.paths
    train, val = (np.load(p, mmap_mode="r") for p in (train_path, val_path))
    ws = lambda x, seed: w.WindowSet(
        x,
        (np.random.default_rng(seed).random(len(x)) < 0.21).astype(np.int64) | (np.arange(len(x)) == 1),
        np.arange(len(x)),
        w.CLASS_NAMES,
        12.8,
    )
    data = w.Data(ws(train, 0), ws(val, 1))
    suite = w.SuiteRunner(Path(args.store) / f"store-{len(train)}", "bench-scaling")
    peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "data": 0}
    stop = threading.Event()
    data_files = {str(Path(p).resolve()) for p in args.paths}

    def sample():
        while not stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                key = line.split(":")[0]
                if key in peaks:
                    peaks[key] = max(peaks[key], int(line.split()[1]))
            peaks["data"] = max(peaks["data"], _mapped_rss_kb(data_files))
            stop.wait(0.05)

    base = {
        line.split(":")[0]: int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.split(":")[0] in peaks
    }
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = suite.run(data, 1, torch.device("cpu"), spec=w.TTM_TINY)
    stop.set()
    sampler.join()
    hwm = next(
        int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")
    )
    print(
        "BENCH_RESULT "
        + json.dumps(
            {
                "epoch_s": t.wall_s,
                "peak_rss_mb": hwm / 1024,
                "peak_anon_mb": peaks["RssAnon"] / 1024,
                "peak_file_mb": peaks["RssFile"] / 1024,
                "base_rss_mb": base["VmRSS"] / 1024,
                "peak_data_mb": peaks["data"] / 1024,
                "data_mb": (train.nbytes + val.nbytes) / 2**20,
            }
        ),
        flush=True,
    )


def _mapped_rss_kb(files: set[str]) -> int:
    """Resident kB of this process's mappings of `files` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header: address range, perms, ..., path
            inside = line.split()[-1] in files
        elif inside and first == "Rss:":
            total += int(line.split()[1])
    return total


# ------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------


def _fmt(v, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "MiB":
        return f"{v:.0f} MiB"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def render(rows: list[dict], info: dict, title: str, command: str) -> str:
    lines = [
        f"### {title}",
        "",
        f"Measured {info['date']} with `{command}` ({info.get('mode', 'full')} mode, {info['elapsed_s']:.0f} s).  ",
        f"Machine: {info['nproc']} cores, {info['cpu']}"
        + (f", GPU {info['gpu']}" if info.get("gpu") else "")
        + f"; torch {info['torch']}"
        + (f", transformers {info['transformers']}" if info.get("transformers") else "")
        + f", Python {info['python']}; torch threads {info['torch_threads']}.  ",
        f"Load average (1/5/15 min) at start: {info['load_start']}, at end: {info.get('load_end', 'n/a')}.",
        "",
        "| # | measurement | suite | reference | suite / reference | target |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r.get("item") == "6":
            continue
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['item']} | {r['what']} | skipped: {r.get('skipped') or r.get('error')} | | | |")
            continue
        unit = r.get("unit", "")
        ref = f"{_fmt(r.get('reference'), unit)} ({r['reference_name']})" if r.get("reference_name") else ""
        ratio = f"**{r['ratio']:.2f}**" if r.get("ratio") is not None else ""
        target = ""
        if r.get("target") is not None:
            if r.get("lower_is_better"):  # a time ratio: cached / uncached
                target = f"≤ {r['target']:.2f} " + ("met" if r["ratio"] <= r["target"] else "**not met**")
            else:
                target = f"≥ {r['target']:.2f} " + ("met" if r["ratio"] >= r["target"] else "**not met**")
        suite = _fmt(r.get("suite"), unit) + ("" if unit in ("s", "MiB") else f" {unit}")
        if r.get("item") == "5":
            suite += f" (best val/auroc {r['best_pruned']:.3f}; {r['wall_pruned_s']:.0f} s)"
            ref = f"{r['reference']} (best val/auroc {r['best_unpruned']:.3f}; {r['wall_unpruned_s']:.0f} s)"
        lines.append(f"| {r['item']} | {r['what']} | {suite} | {ref} | {ratio} | {target} |")
    scaling = [r for r in rows if r.get("item") == "6" and "error" not in r]
    if scaling:
        lines += [
            "",
            "Scaling (item 6): one epoch of the suite's Trainer (train + validation of a quarter as many "
            "windows, ttm_tiny, batch 64, MLflow on) on memory-mapped windows (read-only `np.memmap`), one process "
            "per size, sampling itself every 50 ms: peak RSS, its anonymous part, and the resident pages of the "
            "data files (file-backed: the kernel drops them at will). Time should grow linearly and the "
            "anonymous memory stay flat.",
            "",
            "| windows | epoch | per 1k windows | peak RSS | peak anonymous (RssAnon) "
            "| resident pages of the data file | data on disk |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in scaling:
            lines.append(
                f"| {r['n']:,} | {r['epoch_s']:.2f} s | {1000 * r['epoch_s'] / r['n']:.2f} s | "
                f"{r['peak_rss_mb']:.0f} MiB | {r['peak_anon_mb']:.0f} MiB | {r['peak_data_mb']:.0f} MiB | "
                f"{r['data_mb']:.0f} MiB |"
            )
    return "\n".join(lines) + "\n"


def write_section(name: str, text: str) -> None:
    begin, end = f"<!-- BEGIN {name} (written by bench/bench.py) -->", f"<!-- END {name} -->"
    doc = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(doc)
    log(f"updated {BENCHMARKS_MD} ({name})")


def print_rows(rows: list[dict]) -> None:
    log("")
    for r in rows:
        if r.get("item") == "6" and "error" not in r:
            continue
        if "ratio" in r and r.get("ratio") is not None:
            low = r.get("lower_is_better", False)
            met = r.get("target") is not None and (r["ratio"] <= r["target"] if low else r["ratio"] >= r["target"])
            target = (
                ""
                if r.get("target") is None
                else f"  (target {'<=' if low else '>='} {r['target']}: {'met' if met else 'NOT MET'})"
            )
            log(
                f"[{r['item']}] {r['what']}\n"
                f"      suite {_fmt(r['suite'])} vs {r['reference_name']} {_fmt(r['reference'])}"
                f"  ratio {r['ratio']:.3f}{target}"
            )
        elif "suite" in r:
            log(f"[{r['item']}] {r['what']}: {_fmt(r['suite'], r.get('unit', ''))}")
        else:
            log(f"[{r['item']}] {r['what']}: {r.get('skipped') or r.get('error')}")


# ------------------------------------------------------------------------------------------------------
# modes
# ------------------------------------------------------------------------------------------------------


def quiet() -> None:
    logging.basicConfig(level=logging.ERROR)
    for name in ("ttm_experiments", "mlflow", "transformers", "alembic", "torch._dynamo", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def run_cpu(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    cfg = Config(args.quick)
    items = args.items.split(",") if args.items else [i for i in ITEMS if not (args.quick and i == "compile")]
    info = machine(args.threads) | {"mode": "quick" if args.quick else "full"}
    log(
        f"bench: {info['nproc']} cores ({info['cpu']}), torch {info['torch']}, {info['torch_threads']} threads, "
        f"load {info['load_start']}; items {', '.join(items)}"
    )
    busy = float(info["load_start"].split()[0]) if info["load_start"] != "n/a" else 0.0
    if busy > 0.5 * (os.cpu_count() or 1) and info["torch_threads"] > 1:
        log(
            f"warning: the machine is busy (load {busy:.1f} on {os.cpu_count()} cores): with {info['torch_threads']} "
            "threads timings swing by 2x or more; --threads 1 is steadier (BENCHMARKS.md, Threads)"
        )
    device = torch.device("cpu")
    start = time.perf_counter()
    rows: list[dict] = []
    json_path = Path(args.json) if args.json else ROOT / "runs" / "bench" / "cpu_bench.json"
    command = " ".join(["python bench/bench.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        for item in items:
            t0 = time.perf_counter()
            log(f"\n== {item}")
            if item == "loop":
                rows += bench_loop(cfg, device, store)
            elif item == "eval":
                rows += bench_eval(cfg, device, store)
            elif item == "dropout":
                rows += bench_dropout(cfg, device)
            elif item == "stage_cache":
                rows += bench_stage_cache()
            elif item == "compile":
                rows += bench_compile(cfg, device, store)
            elif item == "startup":
                rows += bench_startup(cfg, args.threads)
            elif item == "search":
                rows += bench_search(cfg, args.threads)
            elif item == "scaling":
                rows += bench_scaling(cfg, args.threads)
            elif item == "memory":
                rows += bench_memory(cfg, args.threads)
            else:
                raise SystemExit(f"unknown item {item!r}; items: {', '.join(ITEMS)}")
            log(f"   ({item}: {time.perf_counter() - t0:.0f} s)")
            save_json(json_path, info, rows, command, start)
    result = save_json(json_path, info, rows, command, start)
    print_rows(rows)
    log(f"\ntotal {info['elapsed_s']:.0f} s; load average {info['load_end']}; results in {json_path}")
    if not args.no_write and not args.items:
        write_section("bench:cpu", render(rows, info, "CPU", command))
    return result


def save_json(path: Path, info: dict, rows: list[dict], command: str, start: float) -> dict:
    """Written after every item, so that a run cut short (a time limit) still leaves what it measured."""
    info |= {
        "elapsed_s": time.perf_counter() - start,
        "load_end": load_average(),
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }
    result = {"machine": info, "rows": rows, "command": command}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    return result


def run_gpu(args) -> dict:
    """Items 1-3 on CUDA, bf16 autocast off and on, then torch.compile while the time budget lasts."""
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        log("no CUDA device visible: nothing to measure in --gpu mode (add --allow-cpu to try the script on CPU)")
        return {}
    quiet()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = Config(quick=False, gpu=device.type == "cuda")
    if device.type == "cpu":  # a dry run of the script: tiny sizes
        cfg = Config(quick=True)
        cfg.n_train, cfg.n_val, cfg.n_eval, cfg.repeats, cfg.epochs = 128, 128, 256, 1, 2
        if args.threads:
            torch.set_num_threads(args.threads)
    # TF32 stays at PyTorch's default (off for matmul): "fp32" rows are fp32, as a user of the suite gets them
    start = time.perf_counter()
    deadline = start + args.budget
    from workloads import mlflow_available  # noqa: E402  (bench/ is on sys.path when run as a script)

    info = machine(args.threads) | {
        "mode": "gpu" if device.type == "cuda" else "gpu script on CPU (dry run)",
        "tracking": "MLflow (SQLite)"
        if mlflow_available()
        else "none: MLflow is not installed on this machine, both loops run untracked",
    }
    log(f"bench --gpu on {info.get('gpu', 'CPU')}: torch {info['torch']}; budget {args.budget:.0f} s")
    out = Path(args.json) if args.json else Path(os.environ.get("OUT") or ROOT / "runs" / "bench") / "gpu_bench.json"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        for amp in (False, True):
            label = "bf16 autocast: " if amp else "fp32: "
            log(f"\n== {label}loop")
            rows += bench_loop(cfg, device, store, amp=amp, label=label)
            save_json(out, info, rows, "bash bench/gpu.sh", start)
            log(f"\n== {label}eval")
            rows += bench_eval(cfg, device, store, amp=amp, label=label)
            save_json(out, info, rows, "bash bench/gpu.sh", start)
            log(f"   ({time.perf_counter() - start:.0f} s so far)")
        for amp in (True, False):
            if time.perf_counter() > deadline - 60:
                log("compile: skipped (time budget)")
                break
            label = "bf16 autocast: " if amp else "fp32: "
            log(f"\n== {label}compile")
            rows += bench_compile(cfg, device, store, amp=amp, label=label, deadline=deadline - 45)
            save_json(out, info, rows, "bash bench/gpu.sh", start)
    if device.type == "cuda":
        info["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result = save_json(out, info, rows, "bash bench/gpu.sh", start)
    print_rows(rows)
    log(f"\ntotal {info['elapsed_s']:.0f} s; results in {out}")
    return result


def merge_gpu(path: str) -> None:
    result = json.loads(Path(path).read_text())
    write_section(
        "bench:gpu",
        render(result["rows"], result["machine"], f"GPU ({result['machine'].get('gpu', 'none')})", result["command"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller data, no compile, no 64k")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument(
        "--items", default="", help=f"comma-separated subset of {','.join(ITEMS)} (BENCHMARKS.md untouched)"
    )
    parser.add_argument("--json", default="", help="where the results go (default runs/bench/<mode>_bench.json)")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--gpu", action="store_true", help="items 1-3 on CUDA with and without bf16 autocast")
    parser.add_argument("--allow-cpu", action="store_true", help="--gpu without a GPU: a dry run on CPU")
    parser.add_argument("--budget", type=float, default=200, help="--gpu: seconds before compile runs are skipped")
    parser.add_argument("--merge-gpu", default="", help="write the GPU section of BENCHMARKS.md from a --gpu JSON")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--store", default="", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "scaling":
        scaling_worker(args)
    elif args.merge_gpu:
        merge_gpu(args.merge_gpu)
    elif args.gpu:
        run_gpu(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
