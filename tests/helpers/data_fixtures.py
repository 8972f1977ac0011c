"""Small real-format datasets written with the real libraries, in the exact on-disk layouts the loaders read.

- BUT-PPG v2: ``wfdb.wrsamp`` records in one folder each, the two CSVs with a UTF-8 BOM, and release-1 records
  with a transposed header (``wfdb.rdrecord`` returns p_signal of shape (1, 300)).
- VitalDB: ``vitaldb.VitalFile()`` + ``add_track`` + ``to_vital``.
- Preprocessed windows: ``numpy.savez`` files in ``train/ val/ test/``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

BUT_FS = 30
BUT_SAMPLES = 300
SUBJECT_COLUMNS = [
    "ID",
    "Gender",
    "Age [years]",
    "Height [cm]",
    "Weight [kg]",
    "Ear/finger",
    "Motion",
    "Blood pressure [mmHg]",
    "SpO2 [%]",
    "Glycaemia [mmol/l]",
]


def ppg(n: int, fs: float, rng: np.random.Generator, good: bool, hr: float = 72.0) -> np.ndarray:
    """A pulse-like signal (fundamental + harmonic + breathing), clean when good, noisy when poor."""
    t = np.arange(n) / fs
    phase = 2 * np.pi * hr / 60 * t + rng.uniform(0, 2 * np.pi)
    x = np.sin(phase) + 0.4 * np.sin(2 * phase + 0.8) + 0.2 * np.sin(2 * np.pi * 0.25 * t)
    noise = 0.05 if good else 1.5
    return x + noise * rng.standard_normal(n) + (0 if good else 2.0 * np.sin(2 * np.pi * rng.uniform(0.3, 3) * t))


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8-sig") as f:  # utf-8-sig writes the BOM, as PhysioNet's files
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_but_record(root: Path, rid: str, signal: np.ndarray, layout: str = "ok") -> None:
    """One record folder. signal: [300, 3] (R, G, B). layout: ok | transposed (release 1: one row of 300, the
    header declares 300 signals of 1 sample) | interleaved (one signal of 900 samples: R,G,B frames)."""
    import wfdb

    folder = root / rid
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{rid}_PPG"
    if layout == "ok":
        wfdb.wrsamp(
            name,
            fs=BUT_FS,
            units=["a.u."] * 3,
            sig_name=["PPG_R", "PPG_G", "PPG_B"],
            p_signal=signal,
            fmt=["16"] * 3,
            write_dir=str(folder),
        )
    elif layout == "transposed":
        row = signal[:, :1].T  # [1, 300]: what a [channels, time] array written as [time, channels] looks like
        wfdb.wrsamp(
            name,
            fs=BUT_FS,
            units=["a.u."] * row.shape[1],
            sig_name=[f"PPG{i}" for i in range(row.shape[1])],
            p_signal=row,
            fmt=["16"] * row.shape[1],
            write_dir=str(folder),
        )
    elif layout == "interleaved":
        wfdb.wrsamp(
            name,
            fs=BUT_FS,
            units=["a.u."],
            sig_name=["PPG"],
            p_signal=signal.reshape(-1, 1),
            fmt=["16"],
            write_dir=str(folder),
        )
    else:
        raise ValueError(layout)


def write_butppg(
    root: Path,
    n_subjects: int = 15,
    records_per_subject: int = 8,
    seed: int = 0,
    *,
    transposed: tuple[str, ...] = (),
    interleaved: tuple[str, ...] = (),
    nan: tuple[str, ...] = (),
    short: tuple[str, ...] = (),
    unlabeled: tuple[str, ...] = (),
    no_folder: tuple[str, ...] = (),
) -> dict[str, dict]:
    """A BUT-PPG v2 tree. Subject s (100 + s) has records <subject>001..; record k has motion code k % 8 and
    quality good for k % 3 == 0, so every subject holds both qualities and all eight motion codes (with 8
    records). Even subjects are recorded at the finger (Ear/finger 1), odd ones at the ear (0).
    Returns ID -> {quality, motion, site} as written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth, ann_rows, info_rows = {}, [], []
    for s in range(n_subjects):
        subject = 100 + s
        site_code = 1 if s % 2 == 0 else 0
        for k in range(records_per_subject):
            rid = f"{subject}{k + 1:03d}"
            quality, motion = int(k % 3 == 0), k % 8
            hr = rng.uniform(60, 90)
            truth[rid] = {"quality": quality, "motion": motion, "site": "finger" if site_code == 1 else "ear"}
            ann_rows.append([rid, "" if rid in unlabeled else quality, f"{hr:.1f}"])
            info_rows.append([rid, "M" if s % 2 else "F", 20 + s, 170, 70, site_code, motion, "120/80", 98, 5.1])
            if rid in no_folder:
                continue
            n = BUT_SAMPLES // 2 if rid in short else BUT_SAMPLES
            channels = np.stack(
                [
                    150 + 10 * ppg(n, BUT_FS, rng, bool(quality), hr),
                    80 + 6 * ppg(n, BUT_FS, rng, bool(quality), hr),
                    30 + 3 * ppg(n, BUT_FS, rng, bool(quality), hr),
                ],
                axis=1,
            )
            if rid in nan:
                channels[40:45, :] = np.nan
            layout = "transposed" if rid in transposed else "interleaved" if rid in interleaved else "ok"
            write_but_record(root, rid, channels, layout)
    write_csv(root / "quality-hr-ann.csv", ["ID", "Quality", "HR"], ann_rows)
    write_csv(root / "subject-info.csv", SUBJECT_COLUMNS, info_rows)
    return truth


def write_vital(
    path: Path,
    seconds: float,
    rng: np.random.Generator,
    *,
    nan_span: tuple[float, float] | None = None,
    flat_span: tuple[float, float] | None = None,
    with_pleth: bool = True,
) -> None:
    """One .vital case: SNUADC/PLETH at 500 Hz (optionally a NaN gap and a flat stretch) and a numeric HR track."""
    import vitaldb

    fs = 500
    t0 = 1_600_000_000.0
    vf = vitaldb.VitalFile()
    vf.dtstart, vf.dtend = t0, t0 + seconds
    x = (50 + 20 * ppg(int(seconds * fs), fs, rng, True)).astype(np.float32)
    if nan_span:
        x[int(nan_span[0] * fs) : int(nan_span[1] * fs)] = np.nan
    if flat_span:
        x[int(flat_span[0] * fs) : int(flat_span[1] * fs)] = 42.0
    track = "SNUADC/PLETH" if with_pleth else "SNUADC/ECG_II"
    vf.add_track(track, [{"dt": t0, "val": x}], srate=fs, unit="", mindisp=0, maxdisp=100)
    vf.add_track("Solar8000/HR", [{"dt": t0 + i, "val": 70.0} for i in range(int(seconds))])
    vf.to_vital(str(path))


def write_windows(
    root: Path,
    splits: dict[str, list[str]],
    length: int = 128,
    fs: float = 12.8,
    seed: int = 0,
    channels: int = 1,
    drop_signal: str | None = None,
) -> None:
    """<root>/<split>/window_NNNNNN.npz, one per record id in splits[split]; quality alternates by record."""
    rng = np.random.default_rng(seed)
    for split, rids in splits.items():
        folder = root / split if split else root
        folder.mkdir(parents=True, exist_ok=True)
        for i, rid in enumerate(rids):
            quality = int(rid[-1]) % 2 if rid[-1].isdigit() else i % 2
            arrays = {
                "signal": np.stack([ppg(length, fs, rng, bool(quality)) for _ in range(channels)]).astype(np.float32),
                "quality": np.int64(quality),
                "hr": np.float64(rng.uniform(60, 90)),
                "motion": np.int64(i % 8),
                "record_id": np.str_(rid),
                "fs": np.float64(fs),
            }
            if drop_signal == rid:
                del arrays["signal"]
            np.savez(folder / f"window_{i:06d}.npz", **arrays)
