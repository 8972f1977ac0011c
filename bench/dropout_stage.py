"""Dropout's price in a whole training stage through the CLI (target: dropout 0.2 within 1.15x of 0.0).

    python bench/dropout_stage.py                 # 3 pairs, 3 epochs of schedule=full (ttm_1024, default data)
    python bench/dropout_stage.py --pairs 2 --epochs 2

Each run is `ttm-train schedule=full trainer.max_epochs_per_stage=<epochs> backbone.dropout=<p>` (the suite's
FastDropout at 0.2, none at 0.0) into its own runs dir, sharing one data cache; the time measured is the
`full` stage's MLflow run (its start to its end: every epoch's training, validation, checkpoints and logging),
not the process start-up. Runs alternate 0.2, 0.0, 0.0, 0.2, ...; the ratio is the median over pairs of
t(0.2) / t(0.0), measured side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = 1.15


def stage_seconds(runs: Path, cache: Path, dropout: float, epochs: int) -> float:
    from mlflow.tracking import MlflowClient

    runs.parent.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).parent / "ttm-train"
    cmd = [
        str(exe),
        "schedule=full",
        f"trainer.max_epochs_per_stage={epochs}",
        f"backbone.dropout={dropout}",
        f"paths.runs_dir={runs}",
        f"paths.cache_dir={cache}",
        "trainer.progress=false",
        "experiment_name=dropout",
        "trainer.stage_cache=false",
    ]
    proc = subprocess.run(
        cmd, cwd=runs.parent, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-3000:])
        raise SystemExit(f"run failed (exit {proc.returncode}): {' '.join(cmd)}")
    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    exp = client.get_experiment_by_name("dropout")
    (stage,) = client.search_runs([exp.experiment_id], "tags.stage = 'full'")
    return (stage.info.end_time - stage.info.start_time) / 1000.0


def measure(pairs: int, epochs: int) -> dict:
    times: dict[float, list[float]] = {0.2: [], 0.0: []}
    with tempfile.TemporaryDirectory(prefix="bench-dropout-stage-") as tmp:
        cache = Path(tmp) / "cache"
        stage_seconds(Path(tmp) / "warm" / "runs", cache, 0.0, 1)  # builds the data cache, untimed
        for i in range(pairs):
            for p in (0.2, 0.0) if i % 2 == 0 else (0.0, 0.2):
                runs = Path(tmp) / f"{i}-{p}" / "runs"
                times[p].append(stage_seconds(runs, cache, p, epochs))
                print(f"pair {i + 1}/{pairs} dropout {p}: full stage {times[p][-1]:.1f} s", flush=True)
    ratio = statistics.median(a / b for a, b in zip(times[0.2], times[0.0]))
    return {"seconds": {str(k): v for k, v in times.items()}, "ratio": ratio, "epochs": epochs, "pairs": pairs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    res = measure(args.pairs, args.epochs)
    print(
        f"\nfull ttm_1024 stage, {args.epochs} epochs, {args.pairs} pairs: dropout 0.2 (FastDropout) / 0.0 = "
        f"{res['ratio']:.3f} (target <= {TARGET}: {'met' if res['ratio'] <= TARGET else 'NOT MET'}); "
        f"load average at start {load:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
