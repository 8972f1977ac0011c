"""Sweep throughput on one GPU: K training jobs packed on it vs 1 job alone; and the evaluation ratio.

    python bench/gpu_pack.py                  # on a CUDA machine (bench/gpu.sh runs it): K=8, ttm_1024, batch 64
    python bench/gpu_pack.py --allow-cpu      # a dry run on CPU with tiny sizes: the script works, no figures
    python bench/gpu_pack.py --merge gpu_pack.json gpu_bench.json   # append its rows to bench.py --gpu's JSON

Packing (target >= 6): a job is what one process of a `hydra/launcher=joblib
hydra.launcher.n_jobs=K` sweep does per step: the suite's `Trainer.train_epoch` (training/loop.py: shuffled
batches by index, fused AdamW, warm-up/cosine, the epoch's metrics) on ttm_1024 at batch 64 in fp32, untracked,
on the device `pick_device("auto", job_num=j)` gives job j (the suite's own rule: with one visible GPU all jobs
share it). K worker processes start, build their model and data and warm up once; then in every round the parent
starts worker 0 alone, and all K together (the order alternates by round), on `--steps` training steps, and each
worker reports when it started and ended (after a device sync). Aggregate samples/s = all samples / (last end -
first start); the ratio is the median over rounds of packed / alone, measured side by side.

Evaluation (target >= 0.95): bench.py's item 3, `Trainer.evaluate` (inference mode, metrics and loss) vs a bare
inference loop on 16,384 windows at batch 256, in this process after the workers have quit.

Without a GPU (and without --allow-cpu) it prints "no GPU: not measured" and exits 0. Several processes on one GPU
time-slice it; NVIDIA's MPS (not started here: the machine's settings are left alone) lets their kernels overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the package and workloads.py, installed or not
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------------
# worker: one sweep job, driven by lines on stdin ("run", "quit"), answering on stdout
# ------------------------------------------------------------------------------------------------------


def worker(args) -> None:
    import torch
    import workloads as w

    import bench  # quiet(): the suite's and the libraries' logging off
    from ttm_experiments.config.spec import pick_device
    from ttm_experiments.models.unfreeze import apply_stage
    from ttm_experiments.training.loop import Trainer
    from ttm_experiments.training.optim import make_optimizer, warmup_cosine

    bench.quiet()
    torch.set_num_threads(args.threads)
    device = pick_device("auto", job_num=args.job)  # the assignment a sweep job gets
    spec = w.TTM_TINY if args.tiny else w.TTM_1024
    data = w.Data(
        w.random_windows(args.steps * args.batch, spec.context_length, args.job),
        w.random_windows(64, spec.context_length, 1000 + args.job),
    )
    trainer = Trainer(
        w.build_model(spec, seed=args.job),
        data.train,
        data.val,
        **w.settings(device, amp=args.amp, batch_size=args.batch),
        tracker=w.NoTracker(),
    )
    apply_stage(trainer.model, w.BLOCKS, scope="full", stage="full")
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = make_optimizer([{"params": params, "lr": w.LR}], weight_decay=w.WEIGHT_DECAY, device=device)
    scheduler = warmup_cosine(optimizer, args.steps * (2 * args.rounds + 1), w.WARMUP)

    def steps(n: int) -> tuple[float, float]:
        trainer.conf.max_batches = n
        w.sync(device)
        start = time.time()  # wall clock: comparable across the worker processes
        trainer.train_epoch(optimizer, scheduler, f"job {args.job}")
        w.sync(device)
        return start, time.time()

    steps(min(5, args.steps))  # warm-up: CUDA context, allocator, kernels, optimizer state
    print("READY " + json.dumps({"job": args.job, "device": str(device)}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            return
        if line.strip() != "run":
            raise SystemExit(f"worker {args.job}: unknown command {line.strip()!r} (expected run or quit)")
        start, end = steps(args.steps)
        print(
            "RESULT " + json.dumps({"job": args.job, "start": start, "end": end, "samples": args.steps * args.batch}),
            flush=True,
        )


class Workers:
    """K worker processes; their stderr goes to a file each (shown when one fails)."""

    def __init__(self, args, log_dir: Path):
        self.procs, self.logs = [], []
        for job in range(args.jobs):
            cmd = (
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    "--job",
                    str(job),
                    "--steps",
                    str(args.steps),
                    "--batch",
                    str(args.batch),
                    "--rounds",
                    str(args.rounds),
                    "--threads",
                    str(args.threads),
                ]
                + (["--tiny"] if args.tiny else [])
                + (["--amp"] if args.amp else [])
            )
            err = (log_dir / f"worker-{job}.log").open("w")
            self.logs.append(err)
            self.procs.append(
                subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
            )
        self.devices = [self._answer(j, "READY")["device"] for j in range(args.jobs)]

    def _answer(self, job: int, kind: str) -> dict:
        line = self.procs[job].stdout.readline()
        while line and not line.startswith(kind + " "):  # anything else a library printed
            line = self.procs[job].stdout.readline()
        if not line:
            rc = self.procs[job].wait()
            self.logs[job].flush()
            tail = Path(self.logs[job].name).read_text()[-3000:]
            raise SystemExit(f"gpu_pack: worker {job} ended (exit status {rc}) before its {kind} line:\n{tail}")
        return json.loads(line.split(" ", 1)[1])

    def run(self, jobs: list[int]) -> float:
        """Aggregate samples/s of `jobs` running their steps at the same time."""
        for j in jobs:
            self.procs[j].stdin.write("run\n")
            self.procs[j].stdin.flush()
        results = [self._answer(j, "RESULT") for j in jobs]
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        return sum(r["samples"] for r in results) / span

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.write("quit\n")
                    p.stdin.flush()
                except BrokenPipeError:  # it has already gone: nothing to tell it
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in self.logs:
            f.close()


def bench_pack(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        workers = Workers(args, Path(tmp))
        try:
            log(f"  {args.jobs} workers ready in {time.perf_counter() - t0:.0f} s on {sorted(set(workers.devices))}")
            alone, packed = [], []
            for r in range(args.rounds):
                order = ("alone", "packed") if r % 2 == 0 else ("packed", "alone")
                for what in order:
                    rate = workers.run([0] if what == "alone" else list(range(args.jobs)))
                    (alone if what == "alone" else packed).append(rate)
                    log(f"  round {r + 1}/{args.rounds} {what:6s} {rate:10.1f} samples/s")
        finally:
            workers.close()
    model = "ttm_tiny" if args.tiny else "ttm_1024"
    return {
        "item": "12.3",
        "what": f"sweep throughput: {args.jobs} jobs packed on one device vs 1 alone (suite's "
        f"Trainer, {model}, batch {args.batch}, {'bf16' if args.amp else 'fp32'}, "
        f"{args.steps} steps per job)",
        "suite": statistics.median(packed),
        "reference": statistics.median(alone),
        "reference_name": "1 job alone",
        "ratio": statistics.median(p / a for p, a in zip(packed, alone)),
        "target": 6.0,
        "unit": "samples/s",
        "devices": sorted(set(workers.devices)),
    }


def bench_evaluation(args, device) -> list[dict]:
    import bench

    cfg = bench.Config(quick=False, gpu=device.type == "cuda")
    if device.type != "cuda":  # dry run
        cfg.n_eval, cfg.repeats = 64, 1
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench.bench_eval(cfg, device, Path(tmp), amp=args.amp, label="bf16 autocast: " if args.amp else "fp32: ")
    for row in rows:
        row["what"] += " (gpu_pack.py)"
    return rows


def save(path: Path, info: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": info, "rows": rows, "command": "bash bench/gpu.sh"}, indent=2, default=str))


def merge(source: Path, target: Path) -> None:
    """Append gpu_pack's rows to bench.py --gpu's JSON, so that `bench.py --merge-gpu` renders both."""
    rows = json.loads(source.read_text())["rows"]
    if not target.exists():
        log(f"{target} does not exist (bench.py --gpu did not finish): {source} stays on its own")
        return
    result = json.loads(target.read_text())
    result["rows"] = [r for r in result["rows"] if "(gpu_pack.py)" not in r["what"] and r["item"] != "12.3"] + rows
    target.write_text(json.dumps(result, indent=2, default=str))
    log(f"added {len(rows)} rows of {source} to {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--allow-cpu", action="store_true", help="a dry run on CPU: tiny model, few steps")
    parser.add_argument("--jobs", type=int, default=0, help="jobs packed together (default 8; dry run 2)")
    parser.add_argument("--steps", type=int, default=0, help="steps per job and round (default 200; dry run 4)")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default 64; dry run 16)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of alone + packed (default 3; dry run 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (default cores / jobs)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (default fp32, the suite's default)")
    parser.add_argument("--json", default="", help="results (default $OUT/gpu_pack.json or runs/bench/gpu_pack.json)")
    parser.add_argument("--merge", nargs=2, metavar=("PACK_JSON", "GPU_BENCH_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge:
        merge(Path(args.merge[0]), Path(args.merge[1]))
        return
    if args.worker:
        worker(args)
        return
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        log("gpu_pack: no GPU: not measured (packing of sweep jobs, evaluation ratio); --allow-cpu runs a dry run")
        return
    dry = not torch.cuda.is_available()
    defaults = (2, 4, 16, 1) if dry else (8, 200, 64, 3)
    args.jobs, args.steps, args.batch, args.rounds = (
        v or d for v, d in zip((args.jobs, args.steps, args.batch, args.rounds), defaults)
    )
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    args.tiny = dry
    import bench

    bench.quiet()
    info = bench.machine(args.threads) | {
        "mode": "gpu" if not dry else "gpu_pack on CPU (dry run: tiny model)",
        "jobs": args.jobs,
        "threads_per_job": args.threads,
    }
    out = Path(args.json) if args.json else Path(os.environ.get("OUT") or ROOT / "runs" / "bench") / "gpu_pack.json"
    start = time.perf_counter()
    log(
        f"gpu_pack on {info.get('gpu', 'CPU (dry run)')}: {args.jobs} jobs x {args.steps} steps, batch {args.batch}, "
        f"{args.rounds} rounds, {args.threads} torch threads per job; load {info['load_start']}"
    )
    rows = [bench_pack(args)]
    save(out, info, rows)
    log("\n== evaluation")
    rows += bench_evaluation(args, torch.device("cuda" if not dry else "cpu"))
    info |= {"elapsed_s": time.perf_counter() - start, "load_end": bench.load_average()}
    save(out, info, rows)
    bench.print_rows(rows)
    if dry:
        log("(dry run on CPU with a tiny model: the figures say nothing about a GPU)")
    log(f"\ntotal {info['elapsed_s']:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
