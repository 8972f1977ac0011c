"""The compiled kernels of `dropout.FastDropout` (numba), imported on first use: importing numba costs ~0.3 s.

- `philox4x32_10(c0, c1, c2, c3, k0, k1)`: one Philox4x32-10 block (for the known-answer test);
- `mask_lanes(mask, words, threshold, scale)`: fills a flat float32 or float64 array with
  the dropout mask, scale where an element is kept and 0 where it is dropped.

Compiled on first use per dtype (`compiled(dtype)`) and cached next to this file, or in numba's user cache
where that is read-only; where neither can be written, numba caches nothing and a warning says that each
process compiles anew (~2 s; `NUMBA_CACHE_DIR` names a writable folder).
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path

import numba
import numpy as np

from ttm_experiments.errors import StoreError
from ttm_experiments.utils import locks

log = logging.getLogger(__name__)

LANES_PER_BLOCK = 8  # one Philox4x32 block: four 32-bit words, eight 16-bit lanes

u32, u64 = np.uint32, np.uint64
M0, M1 = u64(0xD2511F53), u64(0xCD9E8D57)  # Philox4x32 multipliers
W0, W1 = u32(0x9E3779B9), u32(0xBB67AE85)  # Weyl increments of the key
S32, LANE_MASK, S16 = u64(32), u32(0xFFFF), u32(16)


def jit(func):
    """`numba.njit` with its disk cache; without one (no writable cache folder), with a warning."""
    try:
        return numba.njit(func, cache=True, nogil=True, boundscheck=False)
    except RuntimeError as err:  # numba: "cannot cache function ...: no locator available for file ..."
        if "no locator available" not in str(err):
            raise
        warnings.warn(
            f"numba cannot cache the dropout kernel ({err}): every process compiles it anew (~2 s). "
            f"Fix: set NUMBA_CACHE_DIR to a writable folder.",
            RuntimeWarning,
            stacklevel=2,
        )
        return numba.njit(func, cache=False, nogil=True, boundscheck=False)


@numba.njit(inline="always")
def _round(c0, c1, c2, c3, k0, k1):  # one Philox round: two 32x32->64 multiplies (vpmuludq)
    p0 = M0 * u64(c0)
    p1 = M1 * u64(c2)
    return u32(p1 >> S32) ^ c1 ^ k0, u32(p1), u32(p0 >> S32) ^ c3 ^ k1, u32(p0)


@numba.njit(inline="always")
def _philox(c0, c1, c2, c3, k0, k1):
    # ten rounds written out: with a `for _ in range(10)` numba leaves the loop rolled and LLVM then
    # does not vectorise the loop over blocks (measured 1.7 ms against 0.25 ms for 393k elements)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = u32(k0 + W0), u32(k1 + W1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = u32(k0 + W0), u32(k1 + W1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = u32(k0 + W0), u32(k1 + W1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = u32(k0 + W0), u32(k1 + W1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = u32(k0 + W0), u32(k1 + W1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = u32(k0 + W0), u32(k1 + W1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = u32(k0 + W0), u32(k1 + W1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = u32(k0 + W0), u32(k1 + W1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    k0, k1 = u32(k0 + W0), u32(k1 + W1)
    return _round(c0, c1, c2, c3, k0, k1)


@jit
def mask_lanes(mask, words, threshold, scale):
    """mask[j * g + i] = scale if lane j of Philox block i >= threshold else 0, g = mask.size // 8.

    `words`: three int64 from torch's generator; their 32-bit halves, low first, are the key (k0, k1) and
    the counter words above the block index (c1, c2, c3); the sixth half is unused. mask.size must be a
    multiple of 8 (the caller pads): the loop then has no bounds to check, and LLVM vectorises it (four
    blocks at a time with AVX2).
    """
    w0, w1 = u64(words[0]), u64(words[1])
    k0, k1, c1, c2, c3 = u32(w0), u32(w0 >> S32), u32(w1), u32(w1 >> S32), u32(u64(words[2]))
    thr = u32(threshold)
    g = mask.size // LANES_PER_BLOCK
    zero = scale - scale
    for i in range(g):
        r0, r1, r2, r3 = _philox(u32(i), c1, c2, c3, k0, k1)
        mask[i] = scale if (r0 & LANE_MASK) >= thr else zero
        mask[g + i] = scale if (r0 >> S16) >= thr else zero
        mask[2 * g + i] = scale if (r1 & LANE_MASK) >= thr else zero
        mask[3 * g + i] = scale if (r1 >> S16) >= thr else zero
        mask[4 * g + i] = scale if (r2 & LANE_MASK) >= thr else zero
        mask[5 * g + i] = scale if (r2 >> S16) >= thr else zero
        mask[6 * g + i] = scale if (r3 & LANE_MASK) >= thr else zero
        mask[7 * g + i] = scale if (r3 >> S16) >= thr else zero


@numba.njit(cache=True)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    return _philox(u32(c0), u32(c1), u32(c2), u32(c3), u32(k0), u32(k1))


@functools.cache
def compiled(dtype: np.dtype):
    """`mask_lanes` compiled (or loaded from numba's cache) for a float mask of `dtype`, once per process.

    numba's cache has no lock: two processes saving entries at once (float32 and float64, or one signature
    on two CPU models sharing a checkout over NFS) can pick the same file name and leave the index pointing
    at the other's code. So the first compile of each dtype holds a file lock in the cache folder, and a
    process that comes second loads what the first saved.
    """
    signature = (
        numba.types.Array(numba.from_dtype(dtype), 1, "C"),
        numba.types.Array(numba.int64, 1, "C"),
        numba.int64,
        numba.from_dtype(dtype),
    )
    cache = getattr(mask_lanes, "_cache", None)
    folder = getattr(cache, "_cache_path", None)
    if folder is None or not os.access(folder, os.W_OK):
        mask_lanes.compile(signature)
        return mask_lanes
    try:
        with locks.file_lock(
            Path(folder) / "dropout_kernels",
            what=f"numba's cache {folder}",
            fix="set NUMBA_CACHE_DIR to a local folder",
            holding="compiles the dropout kernel",
        ):
            mask_lanes.compile(signature)
    except StoreError as err:  # a filesystem without locks: compile unguarded, and say so
        log.warning("%s; compiling the dropout kernel without the lock", err)
        mask_lanes.compile(signature)
    return mask_lanes
