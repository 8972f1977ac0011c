"""The amplitude a model was trained on: each window's location and log-scale, and the range training saw.

TTM's scaler removes every window's mean and standard deviation before the encoder, so the encoder alone is
invariant to `a * x + b` (a > 0). With `backbone.scale_features=true` the head sees the removed location and
log-scale again (amplitude carries quality: low perfusion, clipping), and then the units of the recording
matter: a wearable's raw ADC counts (around 1e6) are far outside a camera's intensities (tens to hundreds) and
saturate the head. So a classifier records the range of location and log-scale over its training windows, and
`ttm-predict` / the MLflow model count the windows well outside it (`AmplitudeRange.bounds`: new subjects of the
same data pass, other units do not).

The statistics are the scaler's own (TTM `scaling="std"`: the window mean, and the standard deviation with
`minimum_scale` 1e-5 added to the variance) computed in float64, so a window reads the same wherever it is
checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MINIMUM_SCALE = 1e-5  # TinyTimeMixerStdScaler's default: added to the variance before the square root
SCALE_MARGIN = 2.0  # a window's scale may lie this factor beyond the training windows' before it is flagged


def window_stats(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window and channel: the location and log-scale that the scaler removes ([N, C] each)."""
    x = np.asarray(windows, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, None, :]
    loc = x.mean(axis=2)
    scale = np.sqrt(x.var(axis=2) + MINIMUM_SCALE)
    return loc, np.log(scale)


@dataclass(frozen=True)
class AmplitudeRange:
    """Per channel, the lowest and highest window location and log-scale among the training windows."""

    loc_low: tuple[float, ...]
    loc_high: tuple[float, ...]
    log_scale_low: tuple[float, ...]
    log_scale_high: tuple[float, ...]
    windows: int  # how many training windows the range was taken over

    @classmethod
    def of(cls, windows: np.ndarray, chunk: int = 4096) -> AmplitudeRange:
        """Over all `windows` [N, C, T] (read `chunk` rows at a time: a memory-mapped corpus stays on disk)."""
        stats = [window_stats(windows[i : i + chunk]) for i in range(0, len(windows), chunk)]
        if not stats:
            raise ValueError("no windows to take an amplitude range over")
        loc, log_scale = (np.concatenate(parts) for parts in zip(*stats))
        return cls(
            loc_low=tuple(loc.min(axis=0).tolist()),
            loc_high=tuple(loc.max(axis=0).tolist()),
            log_scale_low=tuple(log_scale.min(axis=0).tolist()),
            log_scale_high=tuple(log_scale.max(axis=0).tolist()),
            windows=int(len(loc)),
        )

    def as_dict(self) -> dict:
        return {
            "loc_low": list(self.loc_low),
            "loc_high": list(self.loc_high),
            "log_scale_low": list(self.log_scale_low),
            "log_scale_high": list(self.log_scale_high),
            "windows": self.windows,
        }

    @classmethod
    def from_dict(cls, d: dict) -> AmplitudeRange:
        return cls(
            loc_low=tuple(d["loc_low"]),
            loc_high=tuple(d["loc_high"]),
            log_scale_low=tuple(d["log_scale_low"]),
            log_scale_high=tuple(d["log_scale_high"]),
            windows=int(d["windows"]),
        )

    def bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The accepted location and log-scale per channel: the training range widened by a margin, so that new
        subjects of the same data pass and a change of units (a gain, an offset, counts for intensities) does not.

        Location: beyond the training range by more than the range's width or the largest training scale (a
        window's own fluctuation), whichever is larger. Scale: more than SCALE_MARGIN times beyond its range."""
        lo, hi = np.asarray(self.loc_low), np.asarray(self.loc_high)
        margin = np.maximum(hi - lo, np.exp(np.asarray(self.log_scale_high)))
        log_margin = np.log(SCALE_MARGIN)
        return (
            lo - margin,
            hi + margin,
            np.asarray(self.log_scale_low) - log_margin,
            np.asarray(self.log_scale_high) + log_margin,
        )

    def outside(self, windows: np.ndarray) -> np.ndarray:
        """[N] bool: a window whose location or log-scale, on any channel, lies outside `bounds()`."""
        loc, log_scale = window_stats(windows)
        loc_lo, loc_hi, scale_lo, scale_hi = self.bounds()
        out = (loc < loc_lo) | (loc > loc_hi) | (log_scale < scale_lo) | (log_scale > scale_hi)
        return out.any(axis=1)

    def describe(self) -> str:
        """The training range and what is accepted, in the recording's units (per channel when there are several)."""
        loc_lo, loc_hi, scale_lo, scale_hi = self.bounds()
        parts = []
        for c in range(len(self.loc_low)):
            prefix = f"channel {c}: " if len(self.loc_low) > 1 else ""
            parts.append(
                f"{prefix}training location {self.loc_low[c]:.4g}..{self.loc_high[c]:.4g} and scale "
                f"{np.exp(self.log_scale_low[c]):.4g}..{np.exp(self.log_scale_high[c]):.4g}, accepted "
                f"{loc_lo[c]:.4g}..{loc_hi[c]:.4g} and {np.exp(scale_lo[c]):.4g}..{np.exp(scale_hi[c]):.4g}"
            )
        return "; ".join(parts)
