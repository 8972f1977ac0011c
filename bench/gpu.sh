#!/usr/bin/env bash
# Benchmark items 1-3 on a CUDA GPU, bf16 autocast off and on, then torch.compile while the budget lasts:
# the suite's Trainer vs a bare PyTorch loop vs transformers.Trainer, and evaluation. About 3 minutes on an
# H100 including imports (the script stops starting compile runs after --budget seconds, 200 by default).
#
#   bash bench/gpu.sh                      # from the repository root; writes $OUT/gpu_bench.{json,log}
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
# shellcheck disable=SC2086
timeout 235 "$PYTHON" bench/bench.py --gpu --json "$OUT_DIR/gpu_bench.json" ${GPU_BENCH_ARGS:-} 2>&1 \
  | tee "$OUT_DIR/gpu_bench.log"
