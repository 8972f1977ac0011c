"""Dropout at the price of a mask: `FastDropout` and `use_fast_dropout(model)`.

On CPU, PyTorch's `F.dropout` draws one Bernoulli float per element (`bernoulli_`, the slow part),
divides the noise by 1-p and multiplies; in TinyTimeMixer's mixer MLPs that doubles a training step
(issue 12). `FastDropout` keeps the stock semantics (each element kept independently with probability
1-p and scaled by 1/(1-p); identity in evaluation mode or with p=0) and pays for little more than the
multiply: each 64-bit random word gives four independent 16-bit lanes, and an element is kept when
its lane is >= round(p * 65536). So the drop probability is p rounded to a multiple of 1/65536 (error
<= 2**-17, e.g. 0.2 -> 13107/65536 = 0.1999969); outside [1/65536, 1 - 1/65536] the stock kernel runs
instead, and so it does for tensors under `MIN_FAST_NUMEL` elements, where it is the cheaper one. The
words come from numpy's SFC64 seeded per call from torch's generator (`random_lanes`), so
`torch.manual_seed` and torch's RNG state decide every mask.

On a GPU (any device but the CPU) and under `torch.compile` it calls `F.dropout`, which is a fused
kernel there. Masks are not the stock ones: a run with fast dropout is reproducible under the same
seed, but not bit-identical to a run with `nn.Dropout` (other random numbers, like another seed).
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LANE_BITS = 16
_LANES = 1 << LANE_BITS  # 65536: the resolution of p is 1/65536
_LANES_PER_DRAW = 64 // LANE_BITS
# below this many elements the stock kernel is cheaper: the fast path costs ~80 us a call in Python and
# dispatch, F.dropout ~10 ns an element (crossover measured near 8k elements on 2 Xeon/EPYC cores)
MIN_FAST_NUMEL = 8192


_local = threading.local()  # one bit generator per thread, reseeded on every call


def random_lanes(shape: torch.Size, generator: torch.Generator | None = None) -> torch.Tensor:
    """A CPU int16 tensor of `shape`, independent uniform values, four from each 64-bit random word.

    The words come from numpy's SFC64, seeded per call the way SFC64 seeds itself (three 64-bit words,
    counter 1, twelve rounds discarded) with 192 bits drawn from `generator` (default: torch's global
    CPU generator). So `torch.manual_seed` decides every mask, `torch.get_rng_state` / `set_rng_state`
    replay them, and numpy's global state is untouched. SFC64 streams about twice as fast as torch's own
    `random_` (Mersenne Twister, one call per element); setting the state of a kept generator costs
    ~2 us where building one from a SeedSequence costs ~12 us (24 calls per ttm_1024 step).
    """
    seed = torch.empty(3, dtype=torch.int64).random_(-(2**63), None, generator=generator).numpy().view(np.uint64)
    bits = getattr(_local, "sfc64", None)
    if bits is None:
        bits = _local.sfc64 = np.random.SFC64(0)
    bits.state = {"bit_generator": "SFC64", "state": {"state": np.array([*seed, 1], dtype=np.uint64)},
                  "has_uint32": 0, "uinteger": 0}
    bits.random_raw(12, output=False)
    numel = shape.numel()
    words = bits.random_raw((numel + _LANES_PER_DRAW - 1) // _LANES_PER_DRAW)
    # reshaped in numpy: a torch view costs more than this whole line on a small tensor
    return torch.from_numpy(words.view(np.int16)[:numel].reshape(shape))


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype = torch.float32,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A CPU tensor of `shape` and `dtype`: 1/(1-p) where an element is kept, 0 where it is dropped.

    Each element is kept independently with probability 1 - k/65536, k = round(p * 65536) (see
    `random_lanes` for the randomness). `p` must lie in [1/65536, 1 - 1/65536].
    """
    k = round(p * _LANES)
    if not 0 < k < _LANES:
        raise ValueError(f"keep_mask needs p in [1/65536, 1 - 1/65536] (16-bit lanes), got p={p}")
    lanes = random_lanes(shape, generator)
    # a lane is uniform on [-32768, 32767], so P(lane >= k - 32768) = 1 - k/65536. The comparison writes
    # its 1.0 / 0.0 straight into a float32 tensor (one pass; converting the lanes to float first and
    # comparing in place was two, 17 % slower a call), unlike a bool mask times a float tensor (a casting
    # loop, 4x slower); a float mask also makes backward one mul
    mask = torch.empty(shape, dtype=torch.float32)
    torch.ge(lanes, k - _LANES // 2, out=mask)
    if dtype != torch.float32:
        mask = mask.to(dtype)
    return mask.mul_(1.0 / (1.0 - p))


def _fast_path(x: torch.Tensor, p: float) -> bool:
    return (x.device.type == "cpu" and 0 < round(p * _LANES) < _LANES and x.numel() >= MIN_FAST_NUMEL
            and not torch.compiler.is_compiling())


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
    # grad * mask, and in-place use, double backward and forward-mode AD work as for any mul
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
