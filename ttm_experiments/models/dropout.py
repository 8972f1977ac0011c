"""Dropout at the price of a mask: `FastDropout` and `use_fast_dropout(model)`.

On CPU, PyTorch's `F.dropout` draws one Bernoulli float per element (`bernoulli_`, the slow part),
divides the noise by 1-p and multiplies; in TinyTimeMixer's mixer MLPs that doubles a training step.
`FastDropout` keeps the stock semantics (each element kept independently with probability
1-p and scaled by 1/(1-p); identity in evaluation mode or with p=0) and pays for little more than the
multiply: one compiled pass (numba, `dropout_kernels`) writes the mask, and a plain `x * mask` does the
rest (autograd saves the mask, as stock saves its noise; backward is `grad * mask` on torch's threads;
in-place use, double backward and forward-mode AD work as for any mul).

- **Random bits**: Philox4x32-10 (Salmon et al., SC'11; the counter-based generator of cuRAND and of
  PyTorch's CUDA dropout), keyed per call with 160 bits drawn from torch's CPU generator (`draw_words`). So
  `torch.manual_seed` and torch's RNG state decide every mask, `get_rng_state` / `set_rng_state` replay
  them, numpy's state is untouched, and the masks do not depend on thread counts. Being counter-based,
  the generator vectorises (four blocks at a time with AVX2), which numpy's and torch's sequential
  generators cannot (`bench/dropout.py --candidates` times the sources considered).
- **Decision**: each 128-bit block gives eight independent 16-bit lanes; an element is kept when its lane
  is >= k = round(p * 65536). So the drop probability is p rounded to a multiple of 1/65536 (error
  <= 2**-17, e.g. 0.2 -> 13107/65536 = 0.1999969); outside [1/65536, 1 - 1/65536] the stock kernel runs
  instead. Lane j of block i decides element j * ceil(n / 8) + i of the flattened tensor.

Tensors under `MIN_FAST_NUMEL` elements, non-float tensors, non-CPU devices (on a GPU `F.dropout` is a
fused kernel), `torch.compile` and `torch.jit.trace` get `F.dropout`. Masks are not the stock ones: a
run with fast dropout is reproducible under the same seed, but not bit-identical to a run with
`nn.Dropout` (other random numbers, like another seed). numba compiles the kernel on first use and
caches it next to `dropout_kernels.py` (or in numba's user cache where that is read-only): ~2 s once per
dtype; a later process pays ~0.3 s to import numba and ~0.5 s to load the cached kernel.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LANE_BITS = 16
_LANES = 1 << LANE_BITS  # 65536: the resolution of p is 1/65536
LANES_PER_BLOCK = 128 // LANE_BITS  # a Philox4x32 block: four 32-bit words, eight lanes (dropout_kernels)
# below this many elements the stock kernel is cheaper (the fast path's fixed cost is Python, drawing
# the key and numba's dispatch; F.dropout costs ~10 ns an element on 2 Xeon/EPYC cores)
MIN_FAST_NUMEL = 8192
_MAX_BLOCKS = 1 << 32  # the block index is Philox's first counter word
_KERNEL_DTYPES = (torch.float32, torch.float64)  # other dtypes: a float32 mask, converted


@functools.cache
def kernels():
    """The compiled kernels (`dropout_kernels`), imported on first use."""
    from ttm_experiments.models import dropout_kernels

    return dropout_kernels


def draw_words(generator: torch.Generator | None = None) -> np.ndarray:
    """Three random int64 for one call from `generator` (default: torch's global CPU generator). Their
    32-bit halves, low first, are Philox's key (k0, k1) and the counter words above the block index
    (c1, c2, c3); the sixth half is unused."""
    return torch.empty(3, dtype=torch.int64, device="cpu").random_(-(2**63), None, generator=generator).numpy()


def keep_mask(
    shape: torch.Size, p: float, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A CPU tensor of `shape` and `dtype`: 1/(1-p) where an element is kept, 0 where it is dropped.

    Each element is kept independently with probability 1 - k/65536, k = round(p * 65536), from the
    Philox stream of one key drawn from `generator` (see the module docstring). `p` must lie in
    [1/65536, 1 - 1/65536].
    """
    k = round(p * _LANES)
    if not 0 < k < _LANES:
        raise ValueError(f"keep_mask needs p in [1/65536, 1 - 1/65536] (16-bit lanes), got p={p}")
    numel = shape.numel()
    padded = -(-numel // LANES_PER_BLOCK) * LANES_PER_BLOCK
    if padded > LANES_PER_BLOCK * _MAX_BLOCKS:
        raise ValueError(f"keep_mask draws at most {LANES_PER_BLOCK * _MAX_BLOCKS} elements a call, got {numel}")
    kernel_dtype = dtype if dtype in _KERNEL_DTYPES else torch.float32
    # the lanes of a last block that falls past the end are drawn too, into padding, so that the kernel's
    # loop has no bounds to check (and LLVM vectorises it)
    mask = torch.empty(shape if padded == numel else (padded,), dtype=kernel_dtype, device="cpu")
    # the scale as stock's noise.div_(1 - p) computes it, 1 / float32(1 - p) in float32 (equal to stock's noise
    # value for 978 of the p in 0.001..0.999, one ulp off for the rest; float32(1 / (1 - p)): 762 of them)
    if kernel_dtype == torch.float32:
        scale = np.float32(1.0) / np.float32(1.0 - p)
    else:
        scale = np.float64(1.0 / (1.0 - p))
    kernels().compiled(np.dtype(scale.dtype))(mask.numpy().reshape(-1), draw_words(generator), k, scale)
    if padded != numel:
        mask = mask[:numel].view(shape)
    return mask if kernel_dtype == dtype else mask.to(dtype)


def _fast_path(x: torch.Tensor, p: float) -> bool:
    # floating point only: F.dropout refuses integer and bool tensors, and a mask cast to them would truncate
    # the scale; tracing would record an empty tensor, not the kernel that fills it
    return (
        not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.is_floating_point()
        and 0 < round(p * _LANES) < _LANES
        and MIN_FAST_NUMEL <= x.numel() <= LANES_PER_BLOCK * _MAX_BLOCKS
    )


def fast_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """`F.dropout` with the same semantics, cheaper on CPU (see the module docstring)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if not _fast_path(x, p):
        return F.dropout(x, p, training, inplace)
    mask = keep_mask(x.shape, p, x.dtype)
    # a plain differentiable mul: autograd saves the mask (as stock saves its noise tensor), backward is
    # grad * mask on torch's threads, and in-place use, double backward and forward-mode AD work as for
    # any mul
    return x.mul_(mask) if inplace else x.mul(mask)


class FastDropout(nn.Dropout):
    """A drop-in `nn.Dropout` (same `p`, `inplace`, no parameters or buffers), much cheaper on CPU.

    A subclass, so `isinstance(m, nn.Dropout)` still holds for code that looks for dropout layers.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (nn.Dropout's argument name)
        return fast_dropout(input, self.p, self.training, self.inplace)


def use_fast_dropout(module: nn.Module) -> int:
    """Replace every `nn.Dropout` submodule of `module`, at any depth, in place with `FastDropout`.

    The replacement sits under the same attribute name, so `named_modules()` names and `state_dict()`
    keys are exactly the stock ones (dropout has no parameters or buffers): unfreeze patterns and
    checkpoints are unaffected. Only exact `nn.Dropout` instances are swapped (not `Dropout1d/2d`, which
    drop whole channels, nor existing `FastDropout`s, so a second call replaces nothing). Returns how
    many were replaced. Functional `F.dropout` calls inside a model's code are not reached.
    """
    if type(module) is nn.Dropout:
        raise TypeError("use_fast_dropout replaces dropout submodules in place; pass the model that holds them")
    swapped: dict[int, FastDropout] = {}  # a dropout shared by two parents stays one (shared) module
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                if id(child) not in swapped:
                    swapped[id(child)] = FastDropout(child.p, child.inplace).train(child.training)
                setattr(parent, name, swapped[id(child)])
    return len(swapped)
