#!/usr/bin/env bash
# Benchmarks on a CUDA GPU. First the sweep throughput (bench/gpu_pack.py: 8 jobs packed on one GPU vs
# 1 alone, target >= 6x, and the evaluation ratio vs a bare loop, target >= 0.95; about 1.5 minutes), then items
# 1-3 with bf16 autocast off and on, then torch.compile while the budget lasts: the suite's Trainer vs a bare
# PyTorch loop vs transformers.Trainer, and evaluation (about 3 minutes on an H100 including imports; it stops
# starting compile runs after --budget seconds, 200 by default).
#
#   bash bench/gpu.sh                      # from the repository root; writes $OUT/gpu_{pack,bench}.{json,log}
#   GPU_BENCH_ITEMS=pack bash bench/gpu.sh # only gpu_pack.py (GPU_BENCH_ITEMS=bench: only bench.py --gpu)
#   python bench/bench.py --merge-gpu <dir>/gpu_bench.json    # then, anywhere: the GPU section of BENCHMARKS.md
#
# Needs python with torch (CUDA), granite-tsfm, transformers (+ accelerate), mlflow, hydra-core, numpy,
# scikit-learn; the repository need not be installed. PYTHON=... picks the interpreter (default: .venv/bin/python
# when it exists, else python). Without a GPU it says so and exits 0; GPU_BENCH_ARGS=--allow-cpu makes it a
# short dry run on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-runs/bench}"
mkdir -p "$OUT_DIR"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
ITEMS="${GPU_BENCH_ITEMS:-pack,bench}"
status=0
if [[ ",$ITEMS," == *",pack,"* ]]; then
  rm -f "$OUT_DIR/gpu_pack.json"  # never merge an earlier run's figures
  # shellcheck disable=SC2086
  if timeout 200 "$PYTHON" bench/gpu_pack.py --json "$OUT_DIR/gpu_pack.json" ${GPU_BENCH_ARGS:-} 2>&1 \
      | tee "$OUT_DIR/gpu_pack.log"; then
    :
  else
    status=$?; echo "bench/gpu_pack.py failed (exit status $status; 124 = timed out); bench.py --gpu runs anyway"
  fi
fi
if [[ ",$ITEMS," == *",bench,"* ]]; then
  # shellcheck disable=SC2086
  timeout 235 "$PYTHON" bench/bench.py --gpu --json "$OUT_DIR/gpu_bench.json" ${GPU_BENCH_ARGS:-} 2>&1 \
    | tee "$OUT_DIR/gpu_bench.log"
  if [ -f "$OUT_DIR/gpu_pack.json" ]; then  # one JSON for --merge-gpu: bench.py's rows and gpu_pack's
    "$PYTHON" bench/gpu_pack.py --merge "$OUT_DIR/gpu_pack.json" "$OUT_DIR/gpu_bench.json"
  fi
fi
exit "$status"
