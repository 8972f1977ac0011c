"""Baselines in the same harness: a foundation-model number means something only next to these.

- `baseline_sqi`: classical signal-quality indices (neurokit2's template-matching quality, skewness,
  kurtosis, perfusion, spectral concentration around the heart rate, clipping, flat fraction) and a
  class-weighted logistic regression.
- `baseline_site`: recording site alone (ear / finger, BUT-PPG), the shortcut a model must clearly beat.

Both run on the same subject-wise folds as the TTM runs and log the same metric names to MLflow.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy import signal, stats

from ttm_experiments.data.base import WindowSet
from ttm_experiments.errors import DataError

log = logging.getLogger(__name__)

# neurokit2 finds no beats in some windows; those score the worst template quality (0), and are counted. Past this
# fraction of a split's windows the baseline is refused: its number would describe the fallback, not the SQIs.
MAX_FAILED_FRACTION = 0.05

SQI_NAMES = (
    "templatematch",
    "skewness",
    "kurtosis",
    "log_perfusion",
    "hr_band_power",
    "clipped_frac",
    "flat_frac",
    "log_max_diff",
)


def _template_quality(x: np.ndarray, fs: float) -> float:
    """Mean of neurokit2's template-matching quality (correlation of each beat with the average beat); NaN when
    neurokit2 finds no beats (counted and filled by `features`)."""
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neurokit2 warns on windows with too few beats; counted by `features`
        try:
            quality = nk.ppg_quality(nk.ppg_clean(x, sampling_rate=fs), sampling_rate=fs, method="templatematch")
            value = float(np.nanmean(quality))
        except (ValueError, IndexError, TypeError):  # what neurokit2 raises on a window without beats
            value = float("nan")
    return value if np.isfinite(value) else float("nan")


def sqi_features(signals: np.ndarray, fs: float) -> np.ndarray:
    """[N, C, T] -> [N, C * len(SQI_NAMES)] quality indices per channel; NaN where a feature failed."""
    n, c, t = signals.shape
    x = signals.reshape(n * c, t).astype(np.float64)
    centered = x - x.mean(axis=1, keepdims=True)
    std = centered.std(axis=1) + 1e-9
    freqs, power = signal.welch(centered, fs=fs, nperseg=min(256, t), axis=1)
    band = (freqs >= 0.7) & (freqs <= 3.5)  # 42-210 bpm
    hr_power = power[:, band].max(axis=1) / (power.sum(axis=1) + 1e-12)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    clipped = ((np.abs(x - hi) < 1e-6 * (hi - lo + 1e-9)) | (np.abs(x - lo) < 1e-6 * (hi - lo + 1e-9))).mean(axis=1)
    diffs = np.abs(np.diff(x, axis=1))
    flat = (diffs < 1e-3 * std[:, None]).mean(axis=1)
    features = np.stack(
        [
            np.array([_template_quality(row, fs) for row in x]),
            stats.skew(centered, axis=1),
            np.log(stats.kurtosis(centered, axis=1, fisher=False) + 1e-9),
            np.log(
                (np.percentile(x, 95, axis=1) - np.percentile(x, 5, axis=1)) / (np.abs(x.mean(axis=1)) + 1e-9) + 1e-9
            ),
            hr_power,
            clipped,
            flat,
            np.log(diffs.max(axis=1) / std + 1e-9),
        ],
        axis=1,
    )
    return features.reshape(n, c * len(SQI_NAMES))


def site_features(windows: WindowSet) -> np.ndarray:
    if "site" not in windows.meta:
        raise DataError(
            "backbone=baseline_site needs the recording site (meta 'site'), which only dataset=butppg provides. "
            "Fix: dataset=butppg, or backbone=baseline_sqi."
        )
    return np.asarray(windows.meta["site"], dtype=np.float64).reshape(-1, 1)


def features(kind: str, windows: WindowSet) -> tuple[np.ndarray, int]:
    """The baseline's features and the number of windows where an SQI failed (filled with the worst quality, 0).

    Refused past MAX_FAILED_FRACTION of the windows."""
    if kind != "sqi":
        return site_features(windows), 0
    feats = sqi_features(windows.signals, windows.fs)
    failed = int(np.isnan(feats).any(axis=1).sum())
    if failed > MAX_FAILED_FRACTION * len(feats):
        raise DataError(
            f"the SQI features failed (neurokit2 found no beats) on {failed} of {len(feats)} windows, more than "
            f"{MAX_FAILED_FRACTION:.0%}: the baseline would mostly measure the fallback. Check the sampling rate "
            f"({windows.fs:g} Hz) and that the windows hold pulses."
        )
    if failed:
        log.warning(
            "SQI features failed on %d of %d windows (scored the worst template quality, 0)", failed, len(feats)
        )
    return np.nan_to_num(feats, nan=0.0), failed


def fit_predict(kind: str, train: WindowSet, evaluate: list[WindowSet], seed: int) -> tuple[list[np.ndarray], int]:
    """Fit a class-weighted logistic regression on `train`; class probabilities for each of `evaluate`, and the
    windows of `evaluate` whose SQI features failed (each split is checked against MAX_FAILED_FRACTION)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed)
    )
    model.fit(features(kind, train)[0], train.labels)
    if list(model.classes_) != list(range(len(train.class_names))):
        raise DataError(f"the training split lacks classes: it has {list(model.classes_)}")
    probs, failed = [], 0
    for ws in evaluate:
        x, n = features(kind, ws)
        probs.append(model.predict_proba(x))
        failed += n
    return probs, failed
