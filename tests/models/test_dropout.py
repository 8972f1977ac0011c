"""FastDropout: the stock distribution, independence, gradients, modes, seeding, and the swap on real models."""

from __future__ import annotations

import contextlib
import copy
import math
import pickle
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ttm_experiments.models import dropout as fd
from ttm_experiments.models.dropout import FastDropout, fast_dropout, use_fast_dropout

N = 1_000_000
Z = 5.0  # bounds at 5 standard deviations: a false alarm about once in 1.7 million runs per check


def keep_probability(p: float) -> float:
    """What FastDropout implements: p rounded to a multiple of 1/65536."""
    return 1.0 - round(p * 65536) / 65536


def kept(shape, p: float, seed: int = 0) -> torch.Tensor:
    """The keep mask of one training-mode call on ones (as float 0/1)."""
    torch.manual_seed(seed)
    return (FastDropout(p)(torch.ones(shape)) != 0).double()


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


# Random123's published known-answer vectors for Philox4x32-10: (counter, key) -> output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_the_generator_is_philox4x32_10(counter, key, expected):
    assert tuple(int(w) for w in fd.kernels().philox4x32_10(*counter, *key)) == expected


@pytest.mark.parametrize("numel", [8192, 8192 * 3 + 5])  # a multiple of 8, and one whose last block is padded
def test_mask_is_the_philox_lanes_laid_out_as_documented(numel):
    """Element e is lane e // g of block e % g (g = ceil(n / 8)), kept when the lane is >= round(p * 65536),
    the block keyed by the five words drawn from torch's generator: pins the generator, the lanes, the
    layout, the threshold and the source of the key together."""
    p, gen = 0.3, torch.Generator().manual_seed(11)
    k0, k1, c1, c2, c3 = fd.draw_words(torch.Generator().manual_seed(11)).view(np.uint32)[:5]  # low halves first
    mask = fd.keep_mask(torch.Size([numel]), p, generator=gen)
    g = -(-numel // 8)
    words = np.array([fd.kernels().philox4x32_10(i, c1, c2, c3, k0, k1) for i in range(g)], dtype=np.uint32)
    lanes = words.view(np.uint16).T.reshape(-1)  # lane j of block i at j * g + i (little-endian halves)
    expected = np.where(lanes[:numel] >= round(p * 65536), np.float32(1 / (1 - p)), np.float32(0))
    assert mask.dtype == torch.float32 and np.array_equal(mask.numpy(), expected)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9])
def test_keep_rate_and_exact_scaling(p):
    torch.manual_seed(1)
    x = torch.rand(1000, 1000) + 0.5  # no zeros, so a zero in the output is a drop
    out = FastDropout(p)(x)
    keep = out != 0
    q = keep_probability(p)
    assert abs(q - (1 - p)) <= 2**-17  # the resolution of p
    rate = keep.double().mean().item()
    assert abs(rate - q) <= Z * math.sqrt(q * (1 - q) / N), (rate, q)
    # kept values scaled by stock's own float32 scale (its noise value; for these p, 1 / float32(1 - p)), zeros
    # elsewhere
    scale = F.dropout(torch.ones(64), p, True).max()
    assert torch.equal(out[keep], x[keep] * scale)
    assert torch.equal(out[~keep], torch.zeros_like(out[~keep]))


def test_float64_scaling_is_exact():
    torch.manual_seed(0)
    x = torch.randn(10_000, dtype=torch.float64)
    out = FastDropout(0.3)(x)
    keep = out != 0
    assert out.dtype == torch.float64
    assert torch.equal(out[keep], x[keep] * (1.0 / 0.7))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_neighbours_rows_and_channels_are_uncorrelated(p):
    m = kept((64, 4, 64, 61), p)  # batch, channels, patches, features (odd last dim: blocks straddle rows)
    g = -(-m.numel() // 8)  # the lanes of one Philox block lie g elements apart (j * g + i)
    for lag in [*range(1, 9), g, 2 * g, 7 * g]:  # neighbours of a block and of its lanes
        flat = m.flatten()
        n = flat.numel() - lag
        assert abs(corr(flat[:-lag], flat[lag:])) <= Z / math.sqrt(n), lag
    for dim in range(m.dim()):
        a, b = m.narrow(dim, 0, m.shape[dim] - 1), m.narrow(dim, 1, m.shape[dim] - 1)
        assert abs(corr(a, b)) <= Z / math.sqrt(a.numel()), dim


def runs_of_zeros(mask: torch.Tensor) -> np.ndarray:
    """Lengths of the maximal runs of dropped elements in a flat 0/1 keep mask."""
    padded = np.concatenate([[1], mask.flatten().numpy().astype(np.int8), [1]])
    edges = np.diff(padded)
    return np.flatnonzero(edges == 1) - np.flatnonzero(edges == -1)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_runs_of_zeros_are_as_long_as_chance(p):
    m = kept(N, p)
    runs = runs_of_zeros(m)
    q = 1 - keep_probability(p)  # drop probability
    # number of runs (a Wald-Wolfowitz test of independence): a run starts at a drop after a keep
    expected = N * q * (1 - q)
    assert abs(len(runs) - expected) <= Z * math.sqrt(expected), (len(runs), expected)
    # run lengths are geometric: P(length >= k) = q^(k-1); check k = 2..5 against binomial bounds
    for k in range(2, 6):
        share = q ** (k - 1)
        observed = (runs >= k).mean()
        assert abs(observed - share) <= Z * math.sqrt(share * (1 - share) / len(runs)), k
    # the longest run: P(some run >= L) <= N q^L, so L_max stays below the 1e-6 level, and above a
    # length that chance reaches with certainty (expected count of such runs >= 50)
    upper = math.ceil(math.log(1e-6 / N) / math.log(q))
    lower = math.floor(math.log(50 / (N * (1 - q))) / math.log(q))
    assert lower <= runs.max() < upper, (runs.max(), lower, upper)


def test_calls_differ_and_are_uncorrelated():
    drop = FastDropout(0.2)
    torch.manual_seed(3)
    x = torch.ones(N)
    first, second = (drop(x) != 0).double(), (drop(x) != 0).double()
    assert not torch.equal(first, second)
    assert abs(corr(first, second)) <= Z / math.sqrt(N)
    for shift in (1, 2, 3, 4, 1000):  # not a shifted copy of the previous stream either
        assert abs(corr(first[:-shift], second[shift:])) <= Z / math.sqrt(N - shift), shift
    # per-position keep counts over many calls are binomial (no position favoured)
    counts = torch.stack([(drop(torch.ones(8192)) != 0).double() for _ in range(400)]).sum(0)
    q = keep_probability(0.2)
    chi2 = (((counts - 400 * q) ** 2) / (400 * q * (1 - q))).sum().item()
    dof = 8192
    assert abs(chi2 - dof) <= Z * math.sqrt(2 * dof), chi2


def test_backward_is_mask_times_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 16, 48, dtype=torch.float64, requires_grad=True)
    out = FastDropout(0.2)(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    keep = (out != 0).double()
    assert torch.equal(x.grad, grad * keep * (1 / 0.8))


def test_gradcheck(monkeypatch):
    monkeypatch.setattr(fd, "MIN_FAST_NUMEL", 0)  # gradcheck needs a small input; keep the fast path

    def fixed_mask(x):  # gradcheck calls the function many times: one seed, one mask
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return fast_dropout(x, 0.3, training=True)

    x = torch.randn(8, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fixed_mask, (x,))
    assert torch.autograd.gradgradcheck(fixed_mask, (x,))


def test_eval_mode_and_p0_are_identity():
    x = torch.randn(100, 100)
    drop = FastDropout(0.5).eval()
    assert drop(x) is x
    assert FastDropout(0.0)(x) is x  # as stock: p=0 returns the input itself


def test_p_is_validated_like_stock():
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            FastDropout(p)
        with pytest.raises(ValueError, match="between 0 and 1"):
            fast_dropout(torch.ones(3), p)
    assert torch.equal(FastDropout(1.0)(torch.ones(10)), torch.zeros(10))


def test_p_outside_the_lane_resolution_and_small_tensors_use_stock():
    x = torch.ones(fd.MIN_FAST_NUMEL)
    with mock.patch.object(fd.F, "dropout", wraps=fd.F.dropout) as stock:
        FastDropout(1e-6)(x)  # rounds to 0/65536: the stock kernel keeps the exact rate
        FastDropout(1 - 1e-6)(x)
        assert stock.call_count == 2
        FastDropout(0.2)(x)
        assert stock.call_count == 2  # the fast path does not call F.dropout
        FastDropout(0.2)(x[1:])  # below MIN_FAST_NUMEL the stock kernel is the cheaper one
        assert stock.call_count == 3


def test_non_cpu_devices_dispatch_to_stock():
    x = torch.ones(16, 16, device="meta")
    with mock.patch.object(fd.F, "dropout", wraps=fd.F.dropout) as stock:
        out = FastDropout(0.2)(x)
    stock.assert_called_once()
    assert out.device.type == "meta" and out.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.long, torch.bool])
def test_integer_and_bool_inputs_are_refused_like_stock(dtype):
    x = torch.ones(fd.MIN_FAST_NUMEL, dtype=dtype)  # a float mask cast to them would truncate 1/(1-p)
    with pytest.raises(RuntimeError, match="can't be cast"):
        FastDropout(0.2)(x)


def test_tracing_records_stock_dropout_and_the_default_device_is_ignored():
    traced = torch.jit.trace(FastDropout(0.2), torch.ones(fd.MIN_FAST_NUMEL), check_trace=False)
    assert "aten::dropout" in str(traced.graph)  # not an empty tensor the kernel would have filled
    with torch.device("meta"):  # the mask and the key stay on the CPU, where the input is
        out = FastDropout(0.2)(torch.ones(fd.MIN_FAST_NUMEL, device="cpu"))
    assert out.device.type == "cpu" and (out == 0).any()


def test_kernel_compiles_once_per_dtype_under_a_lock_in_numbas_cache_folder(monkeypatch):
    k = fd.kernels()
    held = []  # (lock target, dtypes the kernel had while the lock was held)
    real_lock = k.locks.file_lock

    @contextlib.contextmanager
    def spy(target, **kwargs):
        with real_lock(target, **kwargs):
            yield
            held.append((Path(target), sorted(str(sig[0].dtype) for sig in k.mask_lanes.signatures)))

    monkeypatch.setattr(k.locks, "file_lock", spy)
    k.compiled.cache_clear()  # a fresh process: the first use of each dtype goes through the lock
    try:
        for dtype in (torch.float32, torch.float64):
            for _ in range(2):
                fd.keep_mask(torch.Size([fd.MIN_FAST_NUMEL]), 0.2, dtype)
                fd.keep_mask(torch.Size([fd.MIN_FAST_NUMEL + 3]), 0.2, dtype)  # padded: the same specialisation
    finally:
        k.compiled.cache_clear()
    folder = Path(k.mask_lanes._cache._cache_path)
    # once per dtype, not per call, in numba's cache folder, with that dtype compiled inside the lock
    assert [target for target, _ in held] == [folder / "dropout_kernels"] * 2
    assert "float32" in held[0][1] and "float64" in held[1][1]
    kinds = sorted(str(sig[0].dtype) for sig in k.mask_lanes.signatures)
    assert kinds == ["float32", "float64"]  # the calls used those signatures: nothing compiled outside the lock


def test_without_a_writable_numba_cache_the_kernel_compiles_with_a_warning(monkeypatch):
    import numba.core.caching as caching

    def unwritable(self):
        raise PermissionError("read-only")

    monkeypatch.setattr(caching._CacheLocator, "ensure_cache_path", unwritable)

    def double(a):
        return a * 2

    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR"):
        kernel = fd.kernels().jit(double)
    assert kernel(np.float32(2)) == 4


def test_same_seed_same_masks_and_rng_state_replays():
    drop = FastDropout(0.2)
    x = torch.ones(10_000)
    torch.manual_seed(7)
    a = [drop(x), drop(x)]
    torch.manual_seed(7)
    b = [drop(x), drop(x)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    torch.manual_seed(8)
    assert not torch.equal(drop(x), a[0])
    state = torch.get_rng_state()
    c = drop(x)
    torch.set_rng_state(state)
    assert torch.equal(drop(x), c)


def test_masks_do_not_depend_on_threads_or_numpy_state():
    x = torch.ones(200_000)
    threads = torch.get_num_threads()
    masks = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            np.random.seed(n)
            torch.manual_seed(0)
            masks.append(FastDropout(0.2)(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1])
    np.random.seed(2)
    numpy_before = np.random.get_state()[1].copy()
    FastDropout(0.2)(x)
    assert np.array_equal(np.random.get_state()[1], numpy_before)  # numpy's global RNG untouched


def test_no_grad_and_bf16_autocast():
    torch.manual_seed(0)
    lin = nn.Linear(32, 64)
    drop = FastDropout(0.2)
    x = torch.randn(512, 32)
    with torch.no_grad():
        out = drop(x)
    assert (out == 0).any() and not out.requires_grad  # still drops in training mode
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)
        out = drop(h)
    assert h.dtype == out.dtype == torch.bfloat16
    keep = out != 0
    assert torch.equal(out[keep], h[keep] * 1.25)  # 1/(1-0.2) is exact in bfloat16
    rate = keep.double().mean().item()
    q = keep_probability(0.2)
    assert abs(rate - q) <= Z * math.sqrt(q * (1 - q) / keep.numel())
    out.float().sum().backward()
    assert lin.weight.grad is not None


def test_inplace_and_non_contiguous_inputs():
    torch.manual_seed(0)
    x = torch.rand(300, 200) + 0.5
    y = x.clone()
    out = FastDropout(0.5, inplace=True)(y)
    assert out is y and (y == 0).any()
    t = x.t()  # non-contiguous
    out = FastDropout(0.5)(t)
    keep = out != 0
    assert out.shape == t.shape and torch.equal(out[keep], t[keep] * 2)
    assert FastDropout(0.5)(torch.ones(0, 5)).shape == (0, 5)


def test_pickle_and_deepcopy():
    drop = FastDropout(0.3, inplace=False).eval()
    for clone in (copy.deepcopy(drop), pickle.loads(pickle.dumps(drop))):
        assert type(clone) is FastDropout and clone.p == 0.3 and not clone.training
        assert isinstance(clone, nn.Dropout)
    assert repr(drop) == "FastDropout(p=0.3, inplace=False)"


def tiny_ttm(dropout: float = 0.1) -> nn.Module:
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerModel

    config = TinyTimeMixerConfig(
        context_length=128,
        patch_length=16,
        patch_stride=16,
        num_input_channels=1,
        d_model=16,
        num_layers=2,
        adaptive_patching_levels=2,
        expansion_factor=2,
        dropout=dropout,
        scaling="std",
        mode="common_channel",
    )
    torch.manual_seed(0)
    return TinyTimeMixerModel(config)


def tiny_patchtst(dropout: float = 0.1) -> nn.Module:
    from transformers import PatchTSTConfig, PatchTSTModel

    config = PatchTSTConfig(
        num_input_channels=1,
        context_length=128,
        patch_length=16,
        patch_stride=16,
        d_model=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=32,
        dropout=dropout,
        ff_dropout=dropout,
        path_dropout=dropout,
        positional_dropout=dropout,
        scaling="std",
        do_mask_input=False,
    )
    torch.manual_seed(0)
    return PatchTSTModel(config)


@pytest.mark.parametrize("build", [tiny_ttm, tiny_patchtst])
def test_use_fast_dropout_keeps_names_state_dict_and_eval_outputs(build, monkeypatch):
    monkeypatch.setattr(fd, "MIN_FAST_NUMEL", 0)  # a tiny model's tensors: train through the fast path
    stock = build()
    fast = copy.deepcopy(stock)
    n_dropout = sum(type(m) is nn.Dropout for m in stock.modules())
    assert n_dropout > 0
    assert use_fast_dropout(fast) == n_dropout
    assert use_fast_dropout(fast) == 0  # idempotent
    assert [n for n, _ in fast.named_modules()] == [n for n, _ in stock.named_modules()]
    assert list(fast.state_dict()) == list(stock.state_dict())
    assert all(type(m) is not nn.Dropout for m in fast.modules())
    swapped = [m for m in fast.modules() if isinstance(m, FastDropout)]
    assert len(swapped) == n_dropout and all(m.p == 0.1 for m in swapped)
    fast.load_state_dict(stock.state_dict(), strict=True)
    x = torch.randn(4, 128, 1)
    stock.eval(), fast.eval()
    with torch.no_grad():
        assert torch.equal(stock(past_values=x).last_hidden_state, fast(past_values=x).last_hidden_state)
    fast.train()
    hidden = fast(past_values=x).last_hidden_state
    assert not torch.equal(hidden, stock(past_values=x).last_hidden_state)  # training mode: dropout acts
    hidden.sum().backward()


def test_use_fast_dropout_in_sequential_heads_and_shared_modules():
    shared = nn.Dropout(0.2)
    head = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Dropout(0.2), nn.Linear(4, 2))
    model = nn.ModuleDict({"head": head, "a": shared, "b": nn.Sequential(shared), "d2": nn.Dropout2d(0.2)})
    names = [n for n, _ in model.named_modules(remove_duplicate=False)]
    assert use_fast_dropout(model) == 2
    assert [n for n, _ in model.named_modules(remove_duplicate=False)] == names
    assert isinstance(model["head"][2], FastDropout)
    assert model["a"] is model["b"][0]  # still one module
    assert type(model["d2"]) is nn.Dropout2d  # channel dropout is another distribution: left alone
    with pytest.raises(TypeError, match="in place"):
        use_fast_dropout(nn.Dropout(0.1))


# -- backbone.fast_dropout: the kernel is a choice ------------------------------------------------------------
_NUMBA_PROBE = """
import sys, torch
from ttm_experiments.config.schema import BackboneConf, BackboneKind
from ttm_experiments.models.backbones import build_classifier
from ttm_experiments.models.dropout import FastDropout
conf = BackboneConf(name="tiny", kind=BackboneKind("ttm"), block_pattern="", context_length=128, patch_length=16,
                    patch_stride=16, d_model=16,
                    num_layers=2, adaptive_patching_levels=2, fast_dropout={fast})
model = build_classifier(conf, num_channels=1, num_classes=2).train()
model(torch.randn(256, 1, 128)).sum().backward()  # large enough for the kernel (MIN_FAST_NUMEL)
kinds = {{type(m).__name__ for m in model.modules() if isinstance(m, (torch.nn.Dropout, FastDropout))}}
print(sorted(kinds), "numba" in sys.modules)
"""


@pytest.mark.parametrize("fast, expected", [(True, "['FastDropout'] True"), (False, "['Dropout'] False")])
def test_fast_dropout_false_builds_stock_dropout_and_never_imports_numba(fast, expected):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _NUMBA_PROBE.format(fast=fast)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == expected
