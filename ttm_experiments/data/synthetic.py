"""Synthetic smartphone-PPG windows labelled for signal quality ("poor" / "good"), modelled on BUT-PPG.

Every subject gets one clean pulse recording from ``neurokit2.ppg_simulate`` (simulated in chunks of a few
windows, each chunk with a slightly different heart rate) at ``sim_fs``, resampled to the model's rate and cut
into windows. On top of the pulse every window gets what a phone camera on a fingertip always records
(illumination level, respiratory baseline wander, slow drift, sensor noise); "poor" windows then get one to
three artifacts of random severity, and some "good" windows get a mild one, so that the classes overlap.

Output units are camera-intensity-like: a DC level of tens to hundreds plus a pulse of about one unit, so a
window's raw location and scale carry information (low perfusion shows as a small raw amplitude).

Artifacts are recorded in ``meta["artifact"]`` as a bit mask over :data:`ARTIFACT_NAMES` (decode it with
:func:`artifact_names`) and their strength in ``meta["severity"]`` (0 = none, 1 = signal destroyed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import ndimage, signal, stats

from ttm_experiments.data.base import WindowSet
from ttm_experiments.data.cache import BuildInfo, CacheWriter, cache_key, load_or_build
from ttm_experiments.errors import ConfigError, DataError

# Bump whenever the generator's output for a given spec changes: it is part of the cache key.
GENERATOR_VERSION = "1"

CLASS_NAMES = ("poor", "good")

# Bit i of meta["artifact"] is set when artifact ARTIFACT_NAMES[i] was applied to the window.
ARTIFACT_NAMES = ("pressure", "motion", "light", "clipping", "low_perfusion", "dropout", "burst")
ARTIFACT_BITS = {name: 1 << i for i, name in enumerate(ARTIFACT_NAMES)}

# How often each artifact is picked for a poor window (same order as ARTIFACT_NAMES). Motion dominates
# smartphone recordings; the rest are roughly even.
_ARTIFACT_WEIGHTS = np.array([0.15, 0.25, 0.10, 0.12, 0.13, 0.10, 0.15])
# Probability that a poor window carries 1, 2 or 3 artifacts.
_N_ARTIFACT_PROBS = np.array([0.60, 0.30, 0.10])

# Severity of a poor window: SEV_FLOOR + (1 - SEV_FLOOR) * Beta(a, b). Most poor windows are moderately
# corrupted and a fair share only mildly, which is what keeps the task from being trivially separable.
_POOR_SEVERITY_FLOOR = 0.05
_POOR_SEVERITY_BETA = (1.5, 2.0)
# A good window carries one mild artifact with this probability, with severity uniform in this range.
_GOOD_MILD_PROB = 0.40
_GOOD_MILD_SEVERITY = (0.02, 0.18)

# Windows per neurokit2 call: the heart rate is constant within one call, so smaller chunks give more
# heart-rate variation within a subject; larger ones are slightly faster.
_WINDOWS_PER_CHUNK = 8
# Seconds simulated before the first and after the last window of a chunk: resample_poly's filter rings at
# the edges, and neurokit2 holds the signal flat after its last beat.
_LEAD_S, _TAIL_S = 1.0, 4.0

# Camera channels R, G, B. With the flash on, red carries the strongest pulse and sits near saturation,
# blue is dark and noisy. One-channel data is the red-like channel.
_PULSE_GAIN = np.array([1.0, 0.7, 0.25])
_NOISE_GAIN = np.array([1.0, 1.3, 2.5])
_DC_RANGE = np.array([[150.0, 230.0], [40.0, 120.0], [10.0, 50.0]])
_CLIP_COUPLING = np.array([1.0, 0.5, 0.2])  # saturation mostly hits the bright red channel


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic data set; equal specs give bit-identical data."""

    n_subjects: int = 60
    windows_per_subject: int = 40
    window_length: int = 1024  # samples per window (the model's context length)
    duration_s: float = 10.0  # seconds per window; fs = window_length / duration_s
    channels: int = 1  # 1, or 3 for R, G, B-like camera channels
    good_fraction: float = 0.21  # share of label 1 ("good") after label noise, like BUT-PPG
    label_noise: float = 0.03  # fraction of labels flipped (expert disagreement)
    sim_fs: int = 1000  # rate neurokit2 simulates at before resampling
    seed: int = 0

    @property
    def fs(self) -> float:
        """Sampling rate of the generated windows in Hz."""
        return self.window_length / self.duration_s


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


def generate(spec: SyntheticSpec) -> WindowSet:
    """Generate the data set ``spec`` describes: ``n_subjects * windows_per_subject`` labelled windows.

    Windows come subject by subject, in recording order within a subject. ``meta`` holds per-window
    ``artifact`` (bit mask over ARTIFACT_NAMES), ``severity``, ``hr_bpm`` (nominal heart rate),
    ``true_label`` (before label noise), ``label_flipped``, ``perfusion`` (the subject's pulse amplitude in
    raw units, before any low-perfusion artifact) and ``window_index`` (position in the subject's recording).
    """
    validate_spec(spec)
    # Stream 0 draws data-set-level quantities; stream s + 1 belongs to subject s alone, so a subject's
    # signals do not depend on what was drawn for the subjects before it.
    dataset_seed, *subject_seeds = np.random.SeedSequence(spec.seed).spawn(spec.n_subjects + 1)
    propensities = _good_propensities(spec, np.random.default_rng(dataset_seed))
    parts = [
        _generate_subject(spec, propensities[s], np.random.default_rng(seq)) for s, seq in enumerate(subject_seeds)
    ]

    signals = np.concatenate([p["signals"] for p in parts]).astype(np.float32)
    if not np.isfinite(signals).all():
        bad = int((~np.isfinite(signals)).any(axis=(1, 2)).sum())
        raise DataError(
            f"synthetic generator produced {bad} windows with NaN/Inf for {spec}; this is a bug in "
            "ttm_experiments.data.synthetic, report it with the spec"
        )
    meta_keys = [k for k in parts[0] if k not in ("signals", "labels")]
    return WindowSet(
        signals=signals,
        labels=np.concatenate([p["labels"] for p in parts]).astype(np.int64),
        subjects=np.repeat(np.arange(spec.n_subjects, dtype=np.int64), spec.windows_per_subject),
        class_names=CLASS_NAMES,
        fs=spec.fs,
        meta={k: np.concatenate([p[k] for p in parts]) for k in meta_keys},
    )


def cache_entry(spec: SyntheticSpec) -> tuple[str, dict]:
    """The cache key of ``spec`` and the manifest it is computed from (GENERATOR_VERSION is part of it)."""
    fields = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        # Normalise float fields so that duration_s=10 and duration_s=10.0 share a key.
        if f.type in ("float", float) and not isinstance(value, bool):
            value = float(value)
        fields[f.name] = value
    return cache_key(loader="synthetic", version=GENERATOR_VERSION, settings=fields)


def generate_cached(spec: SyntheticSpec, *, cache_dir: Path) -> WindowSet:
    """The data set for ``spec`` from the dataset cache below ``cache_dir``, generated and stored on a miss."""
    validate_spec(spec)

    def build(writer: CacheWriter) -> BuildInfo:
        windows = generate(spec)
        writer.save_windows(windows)
        return BuildInfo(windows.class_names, windows.fs, report={})

    key, manifest = cache_entry(spec)
    return load_or_build(cache_dir=cache_dir, loader="synthetic", key=key, manifest=manifest, build=build).windows


def validate_spec(spec: SyntheticSpec) -> None:
    """Raise ConfigError naming the first invalid field of ``spec`` and how to fix it."""

    def need_int(name: str, minimum: int) -> None:
        value = getattr(spec, name)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"synthetic.{name}={value!r} is invalid: use an integer >= {minimum}")

    def need_float(name: str, lo: float, hi: float, hint: str) -> None:
        value = getattr(spec, name)
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
            raise ConfigError(f"synthetic.{name}={value!r} is invalid: use a number {hint}")
        if not (lo <= float(value) <= hi) or not np.isfinite(value):
            raise ConfigError(f"synthetic.{name}={value!r} is out of range: use a number {hint}")

    need_int("n_subjects", 1)
    need_int("windows_per_subject", 1)
    need_int("window_length", 32)
    need_int("sim_fs", 500)  # below ~500 Hz neurokit2 drops parts of its model silently
    need_int("seed", 0)
    need_float("duration_s", 2.0, 600.0, "of seconds per window in [2, 600]")
    need_float("good_fraction", 1e-6, 1 - 1e-6, "strictly between 0 and 1")
    need_float("label_noise", 0.0, 0.499, "in [0, 0.5)")
    channels = spec.channels
    if not isinstance(channels, (int, np.integer)) or isinstance(channels, bool) or channels not in (1, 3):
        raise ConfigError(f"synthetic.channels={spec.channels!r} is invalid: use 1 (red-like) or 3 (R, G, B)")
    # The pulse needs a few harmonics below Nyquist, and resampling must not go up.
    if not 8.0 <= spec.fs <= spec.sim_fs:
        raise ConfigError(
            f"synthetic window_length={spec.window_length} over duration_s={spec.duration_s} gives "
            f"fs={spec.fs:.3g} Hz; choose them so that 8 Hz <= fs <= sim_fs ({spec.sim_fs} Hz)"
        )


def artifact_names(code: int) -> list[str]:
    """Decode one ``meta["artifact"]`` bit mask into artifact names."""
    return [name for name, bit in ARTIFACT_BITS.items() if int(code) & bit]


# --------------------------------------------------------------------------------------------------------
# One subject
# --------------------------------------------------------------------------------------------------------


def _generate_subject(spec: SyntheticSpec, good_propensity: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Windows, labels and meta of one subject, drawn from its own random stream."""
    n_win, n_ch, length, fs = spec.windows_per_subject, spec.channels, spec.window_length, spec.fs
    phys = _draw_physiology(spec, rng)
    pulse, hr = _clean_pulse(spec, phys, rng)  # [n_win, T] unit-std pulse, nominal HR per window
    true_labels = _draw_labels(n_win, good_propensity, rng)
    labels, flipped = _apply_label_noise(true_labels, spec.label_noise, rng)

    t = np.arange(length) / fs
    out = np.empty((n_win, n_ch, length))
    artifact = np.zeros(n_win, dtype=np.int64)
    severity = np.zeros(n_win)
    for w in range(n_win):
        kinds, sev = _draw_artifacts(bool(true_labels[w]), rng)
        out[w] = _render_window(pulse[w], t=t, fs=fs, phys=phys, kinds=kinds, severity=sev, rng=rng)
        artifact[w] = sum(ARTIFACT_BITS[k] for k in kinds)
        severity[w] = sev
    return {
        "signals": out,
        "labels": labels,
        "artifact": artifact,
        "severity": severity,
        "hr_bpm": hr,
        "true_label": true_labels.astype(np.int64),
        "label_flipped": flipped,
        "perfusion": np.full(n_win, phys["amplitude"]),
        "window_index": np.arange(n_win, dtype=np.int64),
    }


def _draw_physiology(spec: SyntheticSpec, rng: np.random.Generator) -> dict:
    """Per-subject constants: heart rate and its variability, pulse shape, perfusion, camera levels."""
    n_ch = spec.channels
    return {
        "hr": rng.uniform(55.0, 110.0),
        "ibi_randomness": rng.uniform(0.02, 0.20),
        "rsa": rng.uniform(0.05, 0.40),  # respiratory sinus arrhythmia (neurokit2 frequency_modulation)
        # Pulse shape: a low cutoff smooths the dicrotic notch away (older, stiffer vessels look different,
        # but what matters here is that subjects differ); gamma skews the systolic upstroke.
        "shape_cutoff_hz": rng.uniform(2.5, 9.0),
        "shape_gamma": rng.uniform(-0.6, 0.6),
        # Pulse amplitude in raw intensity units: log-normal across subjects (perfusion, skin, pressure).
        "amplitude": float(np.exp(rng.normal(np.log(1.5), 0.4))),
        "noise_sigma": rng.uniform(0.03, 0.09),
        "resp_hz": rng.uniform(0.15, 0.35),
        "resp_depth": rng.uniform(0.05, 0.30),
        "dc": rng.uniform(_DC_RANGE[:n_ch, 0], _DC_RANGE[:n_ch, 1]),
        "pulse_gain": _PULSE_GAIN[:n_ch] * rng.uniform(0.85, 1.15, n_ch),
        "noise_gain": _NOISE_GAIN[:n_ch],
    }


def _good_propensities(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Per subject, the probability that one of its windows is truly good.

    Propensities follow a Beta distribution around the target, so some subjects are mostly poor and a few
    mostly good. They are drawn as stratified quantiles (one per 1/n_subjects slice, shuffled) rather than
    independently, which keeps the overall good fraction close to the target even with few subjects.
    """
    # Label noise turns good into poor and back; aim the true fraction so the observed one is good_fraction.
    eps = spec.label_noise
    target = float(np.clip((spec.good_fraction - eps) / (1.0 - 2.0 * eps), 0.01, 0.99))
    concentration = 4.0
    n = spec.n_subjects
    quantiles = (rng.permutation(n) + rng.random(n)) / n
    return stats.beta.ppf(quantiles, target * concentration, (1.0 - target) * concentration)


def _clean_pulse(spec: SyntheticSpec, phys: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The subject's clean pulse cut into windows [n_win, T] (unit std, shaped) and the nominal HR of each."""
    n_win, length = spec.windows_per_subject, spec.window_length
    windows, hrs = [], []
    hr = phys["hr"]
    for first in range(0, n_win, _WINDOWS_PER_CHUNK):
        n = min(_WINDOWS_PER_CHUNK, n_win - first)
        # The heart rate wanders a little between chunks (a random walk, kept physiological).
        hr = float(np.clip(hr + rng.normal(0.0, 3.0), 45.0, 130.0))
        chunk = _simulate_chunk(spec, hr, phys, n, int(rng.integers(2**31 - 1)))
        start = int(round(_LEAD_S * spec.fs))
        windows.append(chunk[start : start + n * length].reshape(n, length))
        hrs.append(np.full(n, hr))
    pulse = np.concatenate(windows)
    pulse = _shape_pulse(pulse, spec.fs, phys["shape_cutoff_hz"], phys["shape_gamma"])
    return pulse, np.concatenate(hrs)


def _simulate_chunk(spec: SyntheticSpec, hr: float, phys: dict, n_windows: int, nk_seed: int) -> np.ndarray:
    """Simulate ``n_windows`` windows of clean PPG with neurokit2 at sim_fs and resample to spec.fs."""
    import neurokit2 as nk  # imported here: it takes over a second and only generation needs it

    duration = _LEAD_S + n_windows * spec.duration_s + _TAIL_S
    # All of neurokit2's own distortions are off: artifacts are added after resampling where we control
    # and record them. With these settings ppg_simulate emits no warnings, so none are filtered here.
    ppg = nk.ppg_simulate(
        duration=duration,
        sampling_rate=spec.sim_fs,
        heart_rate=hr,
        frequency_modulation=phys["rsa"],
        ibi_randomness=phys["ibi_randomness"],
        drift=0.0,
        motion_amplitude=0.0,
        powerline_amplitude=0.0,
        burst_number=0,
        burst_amplitude=0.0,
        random_state=nk_seed,
    )
    up, down = _resample_ratio(spec)
    out = signal.resample_poly(ppg, up, down)
    needed = int(round(_LEAD_S * spec.fs)) + n_windows * spec.window_length
    if len(out) < needed:  # cannot happen with the tail margin; guards a future change of the constants
        raise DataError(f"resampled chunk has {len(out)} samples, needs {needed}; raise _TAIL_S")
    return out


def _resample_ratio(spec: SyntheticSpec) -> tuple[int, int]:
    """up/down for resample_poly from sim_fs to fs (exact for the default 1000 Hz -> 102.4 Hz: 64/625)."""
    exact = Fraction(spec.window_length) / (Fraction(spec.duration_s).limit_denominator(10**6) * spec.sim_fs)
    # An unwieldy ratio (e.g. duration_s=10.3) is approximated; the timing error is below 0.1 %.
    ratio = exact.limit_denominator(2000)
    return ratio.numerator, ratio.denominator


def _shape_pulse(pulse: np.ndarray, fs: float, cutoff_hz: float, gamma: float) -> np.ndarray:
    """Give the subject its own waveform (notch smoothing, skew) and scale each window to unit std."""
    cutoff = min(cutoff_hz, 0.45 * fs)
    sos = signal.butter(2, cutoff, fs=fs, output="sos")
    x = signal.sosfiltfilt(sos, pulse, axis=-1)
    x = (x - x.mean()) / x.std()
    if abs(gamma) > 1e-3:
        x = np.expm1(gamma * x) / gamma  # convex or concave warp: sharper or blunter systolic peaks
    x = x - x.mean(axis=-1, keepdims=True)
    return x / x.std(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------


def _draw_labels(n: int, good_propensity: float, rng: np.random.Generator) -> np.ndarray:
    """True labels (1 = good) of one subject's n windows; both classes present when n >= 2."""
    labels = (rng.random(n) < good_propensity).astype(np.int64)
    if n >= 2:
        # Stratified subject-wise splits need both classes in every subject: force one of the missing class.
        for cls in (0, 1):
            if not (labels == cls).any():
                labels[rng.integers(n)] = cls
    return labels


def _apply_label_noise(labels: np.ndarray, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip about ``rate`` of the labels, never removing the last window of a class from the subject."""
    out = labels.copy()
    flip = rng.random(len(labels)) < rate
    for i in np.flatnonzero(flip):
        if len(out) >= 2 and (out == out[i]).sum() == 1:
            flip[i] = False  # keeping both classes matters more than the exact flip rate
            continue
        out[i] = 1 - out[i]
    return out, flip


# --------------------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------------------


def _draw_artifacts(good: bool, rng: np.random.Generator) -> tuple[list[str], float]:
    """Which artifacts a window gets and their overall severity in [0, 1]."""
    if good:
        if rng.random() >= _GOOD_MILD_PROB:
            return [], 0.0
        kind = ARTIFACT_NAMES[rng.choice(len(ARTIFACT_NAMES), p=_ARTIFACT_WEIGHTS / _ARTIFACT_WEIGHTS.sum())]
        return [kind], float(rng.uniform(*_GOOD_MILD_SEVERITY))
    n = 1 + int(rng.choice(len(_N_ARTIFACT_PROBS), p=_N_ARTIFACT_PROBS))
    picks = rng.choice(len(ARTIFACT_NAMES), size=n, replace=False, p=_ARTIFACT_WEIGHTS / _ARTIFACT_WEIGHTS.sum())
    sev = _POOR_SEVERITY_FLOOR + (1.0 - _POOR_SEVERITY_FLOOR) * rng.beta(*_POOR_SEVERITY_BETA)
    return [ARTIFACT_NAMES[i] for i in sorted(picks)], float(sev)


def _render_window(
    pulse: np.ndarray,
    *,
    t: np.ndarray,
    fs: float,
    phys: dict,
    kinds: list[str],
    severity: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One window [C, T]: pulse, baseline and noise as a camera records them, then the artifacts.

    The order follows the physics: pressure and perfusion change the pulsatile (AC) part, motion, bursts and
    drift add to it, the illumination level (DC) and light changes multiply everything, dropout replaces
    samples and the sensor's saturation clips last.
    """
    # Each artifact gets the window severity with a little jitter, so two artifacts differ in strength.
    sev = {k: severity * rng.uniform(0.75, 1.0) for k in kinds}
    ac = _pulsatile(pulse, t=t, fs=fs, phys=phys, sev=sev, rng=rng)
    x = _camera(ac, t=t, fs=fs, phys=phys, sev=sev, rng=rng)
    if "dropout" in sev:
        x = _dropout(x, phys["dc"], sev["dropout"], rng)
    if "clipping" in sev:
        x = _clip(x, sev["clipping"], rng)
    return x


def _pulsatile(
    pulse: np.ndarray, *, t: np.ndarray, fs: float, phys: dict, sev: dict[str, float], rng: np.random.Generator
) -> np.ndarray:
    """The AC part shared by all channels: the pulse with vasomotion, respiration, pressure and drift."""
    amp = phys["amplitude"]
    ac = pulse * (1.0 + 0.1 * _band_noise(rng, t, 0.03, 0.15)) * amp
    ac = ac + amp * phys["resp_depth"] * np.sin(2 * np.pi * phys["resp_hz"] * t + rng.uniform(0, 2 * np.pi))
    if "pressure" in sev:
        ac = _pressure(ac, t, fs, amp, sev["pressure"], rng)
    if "low_perfusion" in sev:
        # Tiny pulse relative to a sensor noise floor that does not shrink with it.
        ac = ac * (1.0 - 0.92 * sev["low_perfusion"])
    return ac + amp * rng.uniform(0.0, 0.25) * _band_noise(rng, t, 0.02, 0.12)  # slow drift, every window


def _camera(
    ac: np.ndarray, *, t: np.ndarray, fs: float, phys: dict, sev: dict[str, float], rng: np.random.Generator
) -> np.ndarray:
    """Each channel [C, T]: its gain of the AC part, motion and bursts, sensor noise, on its DC level."""
    amp = phys["amplitude"]
    x = np.empty((len(phys["dc"]), len(t)))
    motion = _motion(t, amp, sev["motion"], rng) if "motion" in sev else None
    burst = _bursts(t, fs, amp, sev["burst"], rng) if "burst" in sev else None
    light = _light_gain(t, fs, sev["light"], rng) if "light" in sev else 1.0
    for c in range(len(x)):
        xc = ac * phys["pulse_gain"][c]
        # Motion and bursts hit every channel with its own coupling to the lens.
        if motion is not None:
            xc = xc + motion * rng.uniform(0.6, 1.4)
        if burst is not None:
            xc = xc + burst * rng.uniform(0.5, 1.5)
        xc = xc + rng.normal(0.0, phys["noise_sigma"] * phys["noise_gain"][c], len(t))
        x[c] = (phys["dc"][c] + xc) * light  # a change of illumination scales the whole channel
    return x


def _band_noise(rng: np.random.Generator, t: np.ndarray, f_lo: float, f_hi: float, n: int = 6) -> np.ndarray:
    """Smooth random wave with frequencies in [f_lo, f_hi] Hz and roughly unit std (a sum of sinusoids)."""
    freqs = rng.uniform(f_lo, f_hi, n)
    phases = rng.uniform(0.0, 2 * np.pi, n)
    weights = rng.uniform(0.5, 1.0, n)
    wave = (weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(axis=0)
    return wave * np.sqrt(2.0 / (weights**2).sum())


def _pressure(ac: np.ndarray, t: np.ndarray, fs: float, amp: float, s: float, rng: np.random.Generator) -> np.ndarray:
    """Changing finger pressure: the pulse is damped (smaller, smoother) and the baseline shifts slowly."""
    envelope = 1.0 - 0.85 * s * np.clip(0.5 + 0.5 * _band_noise(rng, t, 0.05, 0.4), 0.0, 1.0)
    # Pressing the fingertip flattens the waveform: blend in a low-passed copy.
    smooth = ndimage.uniform_filter1d(ac, size=max(3, int(0.25 * fs)), mode="nearest")
    damped = ((1.0 - s) * ac + s * smooth) * envelope
    return damped + amp * s * rng.uniform(1.0, 4.0) * _band_noise(rng, t, 0.05, 0.3)


def _motion(t: np.ndarray, amp: float, s: float, rng: np.random.Generator) -> np.ndarray:
    """Hand or lens movement: large low-frequency excursions, sometimes with short faster shaking."""
    wave = amp * s * rng.uniform(1.5, 6.0) * _band_noise(rng, t, 0.2, 2.5)
    for _ in range(rng.integers(0, 3)):
        centre, width = rng.uniform(t[0], t[-1]), rng.uniform(0.5, 2.0)
        envelope = np.exp(-0.5 * ((t - centre) / (width / 2.5)) ** 2)
        wave += amp * s * rng.uniform(1.0, 4.0) * envelope * _band_noise(rng, t, 2.0, 6.0, n=3)
    return wave


def _bursts(t: np.ndarray, fs: float, amp: float, s: float, rng: np.random.Generator) -> np.ndarray:
    """Transient broadband bursts (a tap on the phone, a finger twitch): 1 to 4 short noisy events."""
    out = np.zeros_like(t)
    for _ in range(rng.integers(1, 5)):
        n = max(4, int(rng.uniform(0.1, 0.8) * fs))
        start = int(rng.integers(0, max(1, len(t) - n)))
        seg = rng.normal(0.0, 1.0, n) * np.hanning(n)
        out[start : start + n] += amp * s * rng.uniform(2.0, 8.0) * seg[: len(t) - start]
    return out


def _light_gain(t: np.ndarray, fs: float, s: float, rng: np.random.Generator) -> np.ndarray:
    """Ambient light changes: 1 to 3 steps in illumination, each a few percent, with a short transition."""
    gain = np.ones_like(t)
    for _ in range(rng.integers(1, 4)):
        at, width = rng.uniform(t[0], t[-1]), rng.uniform(0.02, 0.3)
        step = 0.5 * (1.0 + np.tanh((t - at) / width))
        gain *= 1.0 + rng.choice([-1.0, 1.0]) * s * rng.uniform(0.01, 0.06) * step
    return gain


def _dropout(x: np.ndarray, dc: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Flat segments: the finger lifts (level jumps to ambient) or the camera stalls (last value held)."""
    x = x.copy()
    n = x.shape[-1]
    total = int(np.clip(s * rng.uniform(0.2, 0.6), 0.02, 0.9) * n)
    pieces = rng.integers(1, 3)
    for _ in range(pieces):
        length = max(2, total // pieces)
        start = int(rng.integers(0, max(1, n - length)))
        if rng.random() < 0.5:
            level = x[:, start].copy()  # frozen frame
        else:
            level = dc * (1.0 + rng.choice([-1.0, 1.0]) * s * rng.uniform(0.02, 0.3))
        x[:, start : start + length] = level[:, None]
    return x


def _clip(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor saturation: the top of the range (sometimes also the bottom) is cut flat."""
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    span = hi - lo
    depth = s * rng.uniform(0.3, 0.7) * _CLIP_COUPLING[: x.shape[0], None]
    upper = hi - depth * span
    lower = lo + depth * span * 0.5 if rng.random() < 0.3 else lo
    return np.clip(x, lower, upper)
