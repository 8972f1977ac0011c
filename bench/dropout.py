"""Dropout's price in a TTM training step: stock `nn.Dropout(0.2)` vs `FastDropout(0.2)` vs dropout 0.0.

    python bench/dropout.py                    # 2 torch threads, ttm_1024 shape, batch 64
    python bench/dropout.py --threads 1
    python bench/dropout.py --candidates       # also the per-call cost of the mask sources considered
    python bench/dropout.py --device cuda      # on a GPU FastDropout dispatches to F.dropout

One step = granite-tsfm `TinyTimeMixerModel` (conf/backbone/ttm_1024.yaml: context 1024, patch 64,
d_model 192, 3 adaptive patching levels x 2 layers, common-channel, std scaling) forward, mean-pooled
last hidden state -> linear head, cross-entropy, backward, fused AdamW. The three models start from the
same weights and run in this one process, interleaved repeat by repeat; the ratios are medians over the
repeats of ratios measured side by side (the machine is shared and absolute times drift).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the package, installed or not
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from ttm_experiments.models.dropout import FastDropout, keep_mask, use_fast_dropout  # noqa: E402

VARIANTS = ("stock", "fast", "off")


class StepModel(nn.Module):
    """TTM backbone + a linear head on the mean-pooled patches."""

    def __init__(
        self, context: int, patch: int, d_model: int, levels: int, layers: int, dropout: float, num_classes: int = 2
    ):
        super().__init__()
        from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerModel

        config = TinyTimeMixerConfig(
            context_length=context,
            patch_length=patch,
            patch_stride=patch,
            num_input_channels=1,
            d_model=d_model,
            num_layers=layers,
            adaptive_patching_levels=levels,
            expansion_factor=2,
            dropout=dropout,
            scaling="std",
            mode="common_channel",
        )
        self.backbone = TinyTimeMixerModel(config)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(past_values=x).last_hidden_state  # [B, C, patches, d_model]
        return self.head(hidden.mean(dim=(1, 2)))


def make_variants(args) -> dict[str, StepModel]:
    torch.manual_seed(0)
    stock = StepModel(args.context, args.patch, args.d_model, args.levels, args.layers, args.dropout)
    fast, off = copy.deepcopy(stock), copy.deepcopy(stock)
    n = use_fast_dropout(fast)
    for m in off.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    print(
        f"dropout modules: {n} swapped to FastDropout; F.dropout calls in TTM's code: only in "
        f"self-attention (config.self_attn={stock.backbone.config.self_attn})",
        flush=True,
    )
    return {"stock": stock, "fast": fast, "off": off}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model: StepModel, optimizer, x, y, steps: int, device) -> tuple[float, float]:
    """Median wall and process-CPU seconds per training step over `steps` steps.

    CPU time leaves out the time the process waits for a core, so on a loaded machine it is the steadier
    figure (with 1 thread; with more, OpenMP's spinning counts as CPU time too).
    """
    wall, cpu = [], []
    for _ in range(steps):
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _ratios(per_repeat: dict[str, list[float]]) -> dict[str, float]:
    def med(a: str, b: str) -> float:
        return statistics.median(u / v for u, v in zip(per_repeat[a], per_repeat[b]))

    return {"fast/off": med("fast", "off"), "stock/off": med("stock", "off"), "fast/stock": med("fast", "stock")}


def bench_step(args) -> dict:
    device = torch.device(args.device)
    models = make_variants(args)
    optimizers = {}
    for name, model in models.items():
        model.to(device).train()
        optimizers[name] = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.context, 1, generator=gen).to(device)
    y = torch.randint(0, 2, (args.batch,), generator=gen).to(device)
    for name in VARIANTS:  # warm-up: allocator, oneDNN primitives, optimizer state
        time_steps(models[name], optimizers[name], x, y, 3, device)
    wall = {name: [] for name in VARIANTS}
    cpu = {name: [] for name in VARIANTS}
    for rep in range(args.repeats):
        order = VARIANTS[rep % 3 :] + VARIANTS[: rep % 3]  # each variant runs first, second, third in turn
        for name in order:
            w, c = time_steps(models[name], optimizers[name], x, y, args.steps, device)
            wall[name].append(w)
            cpu[name].append(c)
    return {
        "ms_per_step": {name: 1e3 * statistics.median(v) for name, v in wall.items()},
        "ratios": _ratios(wall),
        "cpu_ms_per_step": {name: 1e3 * statistics.median(v) for name, v in cpu.items()},
        "cpu_ratios": _ratios(cpu),
        "s_per_step_by_repeat": wall,  # per variant, one median per repeat (bench.py's `dropout` row)
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
    }


def _hash32(numel: int, key: int) -> torch.Tensor:
    """Candidate: a counter-based 32-bit hash (lowbias32) over an index tensor, two 16-bit lanes each."""
    h = torch.arange((numel + 1) // 2, dtype=torch.int32).mul_(-1640531535).add_(key)
    t = torch.empty_like(h)
    for shift, mult in ((16, 0x7FEB352D), (15, -2073450869), (16, None)):
        torch.bitwise_right_shift(h, shift, out=t).bitwise_and_((1 << (32 - shift)) - 1)  # logical shift
        h.bitwise_xor_(t)
        if mult is not None:
            h.mul_(mult)
    return h.view(torch.int16)[:numel]


def _torch_lanes(numel: int) -> torch.Tensor:
    """Candidate: torch's own generator, full-range int64 `random_`, cut into 16-bit lanes."""
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    return words.view(torch.int16)[:numel]


def _sfc64_lanes(numel: int) -> torch.Tensor:
    """Candidate: numpy's SFC64 cut into 16-bit lanes, a new generator per call (the previous FastDropout reset
    one generator's state instead, ~10 us cheaper a call, and compared in one pass)."""
    bits = np.random.SFC64(int(torch.randint(0, 2**62, ())))
    return torch.from_numpy(bits.random_raw((numel + 3) // 4).view(np.int16)[:numel])


def bench_candidates(args) -> dict:
    """Per-call forward cost (ms) of each mask source on the largest dropout tensor of a ttm_1024 step.

    Every integer source but the chosen one ends in the same float mask (to float32, compare in place, scale), the one
    FastDropout multiplies by; `torch.rand_like` compares its floats in place.
    """
    shape = torch.Size((args.batch, 1, args.context // args.patch, 2 * args.d_model))
    x = torch.randn(shape)
    p, numel = args.dropout, shape.numel()
    key = int(torch.randint(0, 2**31 - 1, ()))
    thr, scale = round(p * 65536) - 32768, 1.0 / (1.0 - p)

    def from_lanes(lanes: torch.Tensor) -> torch.Tensor:
        return lanes.to(torch.float32).ge_(thr).mul_(scale)

    candidates = {
        "F.dropout (stock: bernoulli_ float, div, mul)": lambda: F.dropout(x, p, True),
        "mask: torch.rand_like(x) >= p": lambda: torch.rand_like(x).ge_(p).mul_(scale),
        "mask: torch int64 random_ (MT19937) -> 4 x 16-bit lanes": lambda: from_lanes(_torch_lanes(numel)),
        "mask: 32-bit hash of an index tensor (lowbias32) -> 2 lanes": lambda: from_lanes(_hash32(numel, key)),
        "mask: numpy SFC64 -> 4 x 16-bit lanes (close to the previous choice)": lambda: from_lanes(_sfc64_lanes(numel)),
        "mask: numba Philox4x32-10 -> 8 x 16-bit lanes, one pass (chosen)": lambda: keep_mask(shape, p),
        "FastDropout forward (chosen mask + mul)": lambda: FastDropout(p)(x),
    }
    out = {}
    for _ in range(3):  # interleaved rounds; the median of all calls
        for name, fn in candidates.items():
            for _ in range(5):
                fn()
            for _ in range(args.calls // 3):
                start = time.perf_counter()
                fn()
                out.setdefault(name, []).append(time.perf_counter() - start)
    return {"shape": list(shape), "ms_per_call": {k: 1e3 * statistics.median(v) for k, v in out.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats (the ratios' medians)")
    parser.add_argument("--steps", type=int, default=3, help="steps per variant and repeat")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--candidates", action="store_true", help="also time the mask sources per call (CPU)")
    parser.add_argument("--calls", type=int, default=200, help="calls per candidate")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": torch.get_num_threads(), "device": args.device, "torch": torch.__version__}
    if args.candidates:
        result["candidates"] = bench_candidates(args)
        for name, ms in result["candidates"]["ms_per_call"].items():
            print(f"  {ms:7.3f} ms/call  {name}", flush=True)
    result["step"] = bench_step(args)
    ms, ratios = result["step"]["ms_per_step"], result["step"]["ratios"]
    print(
        f"ms/step ({args.threads} threads, batch {args.batch}, {args.device}): stock 0.2 {ms['stock']:.1f}, "
        f"fast 0.2 {ms['fast']:.1f}, dropout 0.0 {ms['off']:.1f}"
    )
    print("ratios (median of interleaved repeats): " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    cpu = result["step"]["cpu_ratios"]
    print("process-CPU-time ratios:                " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()))
    print(f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
