"""The stage cache on a real sweep: an 8-job `schedule=hybrid` grid over `unfreeze.last_n` x `optim.lr`, uncached
(`trainer.stage_cache=false`) and cached (a fresh cache), side by side in one run (target <= 0.55x).

    python bench/stage_cache.py                  # the default hybrid config (about 25 minutes on 2 quiet cores)
    python bench/stage_cache.py --quick          # smaller data and fewer epochs: minutes, for a check
    python bench/stage_cache.py --repeats 2      # uncached, cached, cached, uncached: medians of the walls

Each grid is one `ttm-train -m` multirun (jobs one after another, as a researcher runs it) into its own runs dir.
Prints each grid's wall time, the ratio cached / uncached, which stages the cached grid reused, and checks that
every job's test metrics are identical with and without the cache (exact floats). Exit 1 when they differ.
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

REPO = Path(__file__).resolve().parent.parent
GRID = ["schedule=hybrid", "unfreeze.last_n=1,2", "optim.lr=1e-4,3e-4,1e-3,3e-3"]
QUICK = [
    "dataset.n_subjects=20",
    "dataset.windows_per_subject=20",
    "dataset.pretrain_subjects=20",
    "trainer.max_epochs_per_stage=2",
]
TARGET = 0.55


def run_grid(runs: Path, cached: bool, extra: list[str]) -> tuple[float, dict]:
    exe = Path(sys.executable).parent / "ttm-train"
    cmd = [
        str(exe),
        "-m",
        *GRID,
        *extra,
        f"paths.runs_dir={runs}",
        "trainer.progress=false",
        f"trainer.stage_cache={'true' if cached else 'false'}",
        "experiment_name=bench-stage-cache",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=runs.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"grid failed (exit {proc.returncode}): {' '.join(cmd)}")
    return wall, results(runs)


def results(runs: Path) -> dict:
    """Per job (last_n, lr): its test metrics and the stages it reused."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    exp = client.get_experiment_by_name("bench-stage-cache")
    out = {}
    for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=1000):
        if "mlflow.parentRunId" in r.data.tags:
            continue
        job = (r.data.params["unfreeze.last_n"], r.data.params["optim.lr"])
        out[job] = {
            "test": {k: v for k, v in r.data.metrics.items() if k.startswith("test/")},
            "reused": r.data.tags.get("stage_cache.reused", "none"),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller data, 2 epochs per stage")
    ap.add_argument("--repeats", type=int, default=1, help="pairs of grids (order alternates)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    extra = QUICK if args.quick else []
    walls: dict[bool, list[float]] = {False: [], True: []}
    found: dict[bool, dict] = {}
    order = [c for i in range(args.repeats) for c in ((False, True) if i % 2 == 0 else (True, False))]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-stage-cache-") as tmp:
        for i, cached in enumerate(order):
            runs = Path(tmp) / f"grid{i}" / "runs"
            runs.parent.mkdir(parents=True)
            wall, res = run_grid(runs, cached, extra)
            walls[cached].append(wall)
            found[cached] = res
            print(
                f"grid {i + 1}/{len(order)} {'cached  ' if cached else 'uncached'} {wall:7.1f} s  "
                f"({len(res)} jobs finished)",
                flush=True,
            )
    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    ratio = on / off
    same = (
        all(found[True][job]["test"] == found[False][job]["test"] for job in found[False])
        and found[True].keys() == found[False].keys()
    )
    reused = sorted({v["reused"] for v in found[True].values()})
    print(
        f"\n8-job schedule=hybrid grid (unfreeze.last_n x optim.lr){' --quick' if args.quick else ''}: "
        f"uncached {off:.1f} s, cached {on:.1f} s -> ratio {ratio:.3f} (target <= {TARGET}: "
        f"{'met' if ratio <= TARGET else 'NOT MET'}); load average at start {load[0]:.2f}"
    )
    print(f"stages reused per job: {reused}")
    print(f"test metrics identical with and without the cache: {'yes, every job' if same else 'NO'}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "uncached_s": walls[False],
                    "cached_s": walls[True],
                    "ratio": ratio,
                    "identical": same,
                    "quick": args.quick,
                    "load": load,
                },
                indent=1,
            )
        )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
