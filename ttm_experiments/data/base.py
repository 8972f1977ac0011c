"""The in-memory form every dataset loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ttm_experiments.errors import DataError

# meta["split"] of a dataset that brings its own split (the `windows` format): codes index these names
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class WindowSet:
    """Fixed-length windows with one label each, grouped by subject.

    signals:  float32 [N, C, T]
    labels:   int64 [N], values in range(len(class_names))
    subjects: int64 [N], the group used for subject-wise splits
    """

    signals: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    class_names: tuple[str, ...]
    fs: float
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.signals)
        if self.signals.ndim != 3:
            raise DataError(f"signals must be [N, C, T], got shape {self.signals.shape}")
        for name in ("labels", "subjects"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise DataError(f"{name} must have shape ({n},), got {arr.shape}")
        for key, arr in self.meta.items():
            if len(arr) != n:
                raise DataError(f"meta[{key!r}] has {len(arr)} rows, signals have {n}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            bad = sorted(set(self.labels.tolist()) - set(range(len(self.class_names))))
            raise DataError(f"labels {bad} are outside the class set {list(self.class_names)}")

    def __len__(self) -> int:
        return len(self.signals)

    @property
    def num_channels(self) -> int:
        return self.signals.shape[1]

    @property
    def window_length(self) -> int:
        return self.signals.shape[2]

    def subset(self, index: np.ndarray) -> "WindowSet":
        return replace(
            self,
            signals=self.signals[index],
            labels=self.labels[index],
            subjects=self.subjects[index],
            meta={k: v[index] for k, v in self.meta.items()},
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}
