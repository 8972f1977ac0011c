"""Label efficiency: train on a subset of the training *subjects* (`dataset.label_fraction` or
`dataset.label_subjects`), validation and test untouched.

The subset is a prefix of one fixed order of the training split's subjects, drawn from (`dataset.split_seed`,
`dataset.fold`) alone (not `seed`: training seeds share the subset), so that a smaller fraction is always a subset
of a larger one. The order is stratified by each subject's majority label: within a class its subjects come in a
random permutation, and the classes are interleaved by their position in that permutation relative to the class's
size (i / n_class), so any prefix holds each class in about its share of subjects (a rare class rounded up: the
first subject of every class comes first, so a prefix as long as the number of classes holds them all) and, within a
class, a prefix of that class's permutation. A subset that still loses a class (no window of it, or none of the
subjects whose majority it is) is refused with the smallest setting that keeps every class.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from ttm_experiments.config.schema import DatasetConf
from ttm_experiments.data.base import WindowSet
from ttm_experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ORDER_STREAM = 0x1ABE1  # the order's own random stream under (split_seed, fold): no other draw shares it


@dataclass(frozen=True)
class LabelSubset:
    """What a run trains on after subsampling: counts before and after, per majority class, and the subjects."""

    subjects: int
    windows: int
    subjects_total: int
    windows_total: int
    subjects_per_class: dict[str, int]
    kept: tuple[str, ...]

    def metrics(self) -> dict[str, float]:
        """The counts as MLflow metrics (`label/...`): metrics, not params, so that a report's pairing of runs is
        decided by the settings (`dataset.label_fraction`) alone."""
        out = {
            "label/train_subjects": float(self.subjects),
            "label/train_windows": float(self.windows),
            "label/train_subjects_total": float(self.subjects_total),
            "label/train_windows_total": float(self.windows_total),
            "label/subject_fraction": self.subjects / self.subjects_total,
        }
        out.update({f"label/train_subjects_{c}": float(n) for c, n in self.subjects_per_class.items()})
        return out


def check_settings(d: DatasetConf) -> None:
    """`dataset.label_fraction` in (0, 1], `dataset.label_subjects` >= 1, not both (before any data is read)."""
    f, k = d.label_fraction, d.label_subjects
    if not (isinstance(f, (int, float)) and 0 < f <= 1):
        raise ConfigError(
            f"dataset.label_fraction={f!r} must be in (0, 1]: the share of training subjects kept (1 = all). "
            "Fix: e.g. dataset.label_fraction=0.25"
        )
    if k is not None and k < 1:
        raise ConfigError(f"dataset.label_subjects={k} must be >= 1 (or null for all). Fix: dataset.label_subjects=5")
    if k is not None and f != 1:
        raise ConfigError(
            f"dataset.label_fraction={f} and dataset.label_subjects={k} both choose the training subjects. "
            "Fix: set one of them (the other to 1.0 / null)."
        )


def active(d: DatasetConf) -> bool:
    return d.label_fraction != 1 or d.label_subjects is not None


def majority_labels(train: WindowSet) -> tuple[np.ndarray, np.ndarray]:
    """The training split's subjects (sorted) and each one's majority label (a tie: the lower class index)."""
    subjects, inverse = np.unique(train.subjects, return_inverse=True)
    counts = np.zeros((len(subjects), len(train.class_names)), dtype=np.int64)
    np.add.at(counts, (inverse, train.labels), 1)
    return subjects, counts.argmax(axis=1)


def subject_order(train: WindowSet, *, split_seed: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed, stratified order of the training subjects and their majority labels (in that order)."""
    subjects, majority = majority_labels(train)
    rng = np.random.default_rng([split_seed, fold, ORDER_STREAM])
    perm = rng.permutation(len(subjects))
    position = np.empty(len(subjects))
    for c in np.unique(majority):
        members = perm[majority[perm] == c]  # the class's subjects, in permutation order
        position[members] = np.arange(len(members)) / len(members)
    order = np.lexsort((np.argsort(perm), position))  # by relative position, ties in permutation order
    return subjects[order], majority[order]


def kept_count(n: int, *, fraction: float, count: Optional[int]) -> int:
    """Subjects kept of `n`: `count`, or `fraction` of them rounded half up (at least one)."""
    if count is not None:
        if count > n:
            raise ConfigError(
                f"dataset.label_subjects={count} exceeds the {n} subjects of the training split. "
                f"Fix: dataset.label_subjects<={n} (or null for all)."
            )
        return count
    return max(1, math.floor(fraction * n + 0.5))


def _classes_of(train: WindowSet, subjects: np.ndarray) -> set[int]:
    return set(np.unique(train.labels[np.isin(train.subjects, subjects)]).tolist())


def subsample(train: WindowSet, d: DatasetConf) -> tuple[WindowSet, LabelSubset]:
    """The training windows of the kept subjects, and what was kept; the split is returned unchanged (with its
    counts) when neither setting is active."""
    check_settings(d)
    order, majority = subject_order(train, split_seed=d.split_seed, fold=d.fold)
    k = kept_count(len(order), fraction=d.label_fraction, count=d.label_subjects) if active(d) else len(order)
    kept, kept_majority = order[:k], majority[:k]
    lost_strata = sorted(set(majority.tolist()) - set(kept_majority.tolist()))
    lost_windows = sorted(set(range(len(train.class_names))) - _classes_of(train, kept))
    if lost_strata or lost_windows:
        lost = sorted(set(lost_strata) | set(lost_windows))
        need = _smallest(train, order, majority)
        raise DataError(
            f"{_setting(d)} keeps {k} of the {len(order)} training subjects (fold {d.fold}), which leaves class(es) "
            f"{[train.class_names[i] for i in lost]} without subjects. Fix: dataset.label_subjects>={need} or "
            f"dataset.label_fraction>={need / len(order):.3f} (or more subjects in the dataset)."
        )
    windows = train if k == len(order) else train.subset(np.flatnonzero(np.isin(train.subjects, kept)))
    per_class = {name: int((kept_majority == i).sum()) for i, name in enumerate(train.class_names)}
    info = LabelSubset(
        subjects=int(k),
        windows=len(windows),
        subjects_total=len(order),
        windows_total=len(train),
        subjects_per_class=per_class,
        kept=tuple(str(s) for s in sorted(kept.tolist())),
    )
    if active(d):
        log.info(
            "%s: training on %d of %d subjects (%d of %d windows; subjects per majority class %s); val and test "
            "untouched",
            _setting(d),
            info.subjects,
            info.subjects_total,
            info.windows,
            info.windows_total,
            per_class,
        )
    return windows, info


def _smallest(train: WindowSet, order: np.ndarray, majority: np.ndarray) -> int:
    """The shortest prefix of the order that keeps every class (windows and majority strata)."""
    strata, classes = set(majority.tolist()), set(range(len(train.class_names)))
    for k in range(1, len(order) + 1):
        if set(majority[:k].tolist()) >= strata and _classes_of(train, order[:k]) >= classes:
            return k
    return len(order)


def _setting(d: DatasetConf) -> str:
    if d.label_subjects is not None:
        return f"dataset.label_subjects={d.label_subjects}"
    return f"dataset.label_fraction={d.label_fraction}"


def apply(splits, d: DatasetConf):
    """`Splits` with the training split subsampled (validation and test the same objects) and its `label_subset`."""
    train, info = subsample(splits.train, d)
    return replace(splits, train=train, label_subset=info)
