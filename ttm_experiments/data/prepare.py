"""From a dataset config to checked, subject-wise train/val/test splits.

Every check runs before the model is built: a window length that differs from the backbone's context,
NaN or constant windows, a fold out of range, a split without a class. Nothing is padded, cropped or
dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ttm_experiments.config.schema import DatasetConf, DatasetLoader, NonFinite
from ttm_experiments.data import butppg, vitaldb
from ttm_experiments.data import windows as windows_dir
from ttm_experiments.data.base import SPLIT_NAMES, WindowSet
from ttm_experiments.data.synthetic import SyntheticSpec, generate_cached
from ttm_experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# A loader's own settings: the synthetic generator's spec, or the settings object of a real dataset's loader
LoaderSettings = Union[SyntheticSpec, butppg.Settings, windows_dir.Settings, vitaldb.Settings]


def _synthetic_settings(d: DatasetConf, seed: int) -> SyntheticSpec:
    # the generator's own knobs (sim_fs) keep their defaults; the seed only matters to generated data
    return SyntheticSpec(
        n_subjects=d.n_subjects,
        windows_per_subject=d.windows_per_subject,
        window_length=d.window_length,
        duration_s=d.duration_s,
        channels=d.channels,
        good_fraction=d.good_fraction,
        label_noise=d.label_noise,
        seed=seed,
    )


def _butppg_settings(d: DatasetConf, seed: int) -> butppg.Settings:
    s = butppg.Settings(
        root=d.root,
        task=d.task,
        colours=tuple(d.ppg_channels),
        window_length=d.window_length,
        duration_s=d.duration_s,
        nonfinite=d.nonfinite,
        missing_records=d.missing_records,
    )
    if len(s.colours) != d.channels:
        raise ConfigError(
            f"dataset.ppg_channels={list(s.colours)} selects {len(s.colours)} channel(s) but "
            f"dataset.channels={d.channels}: they must agree (the model's input channels). "
            f"Fix: dataset.channels={len(s.colours)}"
        )
    return s


def _windows_settings(d: DatasetConf, seed: int) -> windows_dir.Settings:
    return windows_dir.Settings(
        root=d.root, task=d.task, window_length=d.window_length, duration_s=d.duration_s, subject_from=d.subject_from
    )


def _vitaldb_settings(d: DatasetConf, seed: int) -> vitaldb.Settings:
    if d.channels != 1:
        raise ConfigError(
            f"dataset.loader=vitaldb reads one PPG track ({d.track}), but dataset.channels={d.channels}. "
            "Fix: dataset.channels=1"
        )
    return vitaldb.Settings(root=d.root, track=d.track, window_length=d.window_length, duration_s=d.duration_s)


# dataset.loader -> (dataset config, seed) -> the loader's own settings: the one place a DatasetConf is read for
# loading, so a loader never sees the whole config
SETTINGS: dict[DatasetLoader, Callable[[DatasetConf, int], LoaderSettings]] = {
    DatasetLoader.synthetic: _synthetic_settings,
    DatasetLoader.butppg: _butppg_settings,
    DatasetLoader.windows: _windows_settings,
    DatasetLoader.vitaldb: _vitaldb_settings,
}

# dataset.loader -> loader(its settings, cache_dir)
LOADERS: dict[DatasetLoader, Callable[[Any, Path], WindowSet]] = {
    DatasetLoader.synthetic: lambda s, cache_dir: generate_cached(s, cache_dir=cache_dir),
    DatasetLoader.butppg: lambda s, cache_dir: butppg.load_butppg(s, cache_dir=cache_dir).windows,
    DatasetLoader.windows: lambda s, cache_dir: windows_dir.load_windows_dir(s, cache_dir=cache_dir).windows,
    DatasetLoader.vitaldb: lambda s, cache_dir: vitaldb.load_vitaldb(s, cache_dir=cache_dir).windows,
}


def dataset_loader(conf: DatasetConf) -> DatasetLoader:
    """The loader that reads the dataset option ``conf`` (``dataset.loader``; ``dataset.name`` only names it)."""
    try:
        return DatasetLoader(conf.loader)
    except ValueError:
        raise DataError(
            f"dataset.loader={conf.loader!r} (dataset={conf.name}) is not a loader; "
            f"available: {[k.value for k in DatasetLoader]}"
        ) from None


def loader_settings(conf: DatasetConf, *, seed: int = 0) -> LoaderSettings:
    """The settings of the loader ``conf`` names, built from the dataset config (checked); ``seed`` only matters to
    generated data."""
    return SETTINGS[dataset_loader(conf)](conf, seed)


def load_windows(conf: DatasetConf, *, seed: int, cache_dir: Path) -> WindowSet:
    """The windows of the dataset option ``conf`` (read by the loader ``dataset.loader`` names), through the cache
    below ``cache_dir``."""
    loader = dataset_loader(conf)
    return LOADERS[loader](SETTINGS[loader](conf, seed), Path(cache_dir))


def check_windows(windows: WindowSet, context_length: int, num_channels: int, nonfinite: NonFinite | str) -> WindowSet:
    """Refuse windows that do not fit the model; drop or refuse NaN/Inf and constant windows."""
    if windows.window_length != context_length:
        raise DataError(
            f"the data's windows have {windows.window_length} samples, the backbone's context length is "
            f"{context_length}. Windows are never padded or cropped: resample the data to {context_length} "
            "samples (dataset.window_length follows backbone.context_length) or pick a backbone that fits."
        )
    if windows.num_channels != num_channels:
        raise DataError(f"the data has {windows.num_channels} channels, the model expects {num_channels}")
    finite, constant = _scan(windows.signals)
    bad = ~finite | constant
    if bad.any():
        detail = f"{int((~finite).sum())} window(s) with NaN/Inf and {int(constant.sum())} constant window(s)"
        if NonFinite(nonfinite) == NonFinite.error:
            raise DataError(
                f"{detail} of {len(windows)}. They carry no signal and break the scaler. "
                "Fix: clean the data, or dataset.nonfinite=drop to drop them (the count is logged)."
            )
        log.warning("dropping %s of %d (dataset.nonfinite=drop)", detail, len(windows))
        windows = windows.subset(np.flatnonzero(~bad))
    return windows


def _scan(signals: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per window: all finite? constant in some channel? In chunks, so a memory-mapped corpus is never
    loaded whole."""
    finite = np.empty(len(signals), dtype=bool)
    constant = np.zeros(len(signals), dtype=bool)
    for start in range(0, len(signals), chunk):
        block = np.asarray(signals[start : start + chunk])
        ok = np.isfinite(block).all(axis=(1, 2))
        finite[start : start + chunk] = ok
        constant[start : start + chunk][ok] = (block[ok].std(axis=2) < 1e-8).any(axis=1)
    return finite, constant


class RowView:
    """Rows `rows` of a (possibly memory-mapped) array, read only when indexed: a split of a large corpus
    without copying it."""

    def __init__(self, base: np.ndarray, rows: np.ndarray):
        self.base, self.rows = base, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.base[self.rows[index]]


def subject_folds(labels: np.ndarray, subjects: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Indices of each fold: stratified by label, grouped by subject, fixed by seed."""
    n_subjects = len(np.unique(subjects))
    if n_subjects < n_folds:
        raise DataError(
            f"{n_subjects} subjects cannot fill {n_folds} subject-wise folds. Fix: dataset.n_folds<={n_subjects} "
            "or more subjects."
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(labels)), labels, groups=subjects)]


@dataclass
class Splits:
    train: WindowSet
    val: WindowSet
    test: WindowSet
    shared_subjects: int = field(default=0, compare=False)  # a predefined split's subjects in two of its splits
    label_subset: Any = field(default=None, compare=False)  # data/label_fraction.py: the training subjects kept

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))


def split_subject_wise(windows: WindowSet, n_folds: int, fold: int, seed: int, *, allow_shared: bool = False) -> Splits:
    """Fold `fold` is the test set, the next fold the validation set, the rest trains. No subject is in two.

    A dataset with ``meta["split"]`` (codes into SPLIT_NAMES, or the names) brings its own split: it is used
    as it is (`n_folds` and `seed` do not apply; a `fold` other than 0 is refused). One that puts a subject in two
    of its splits is refused unless `allow_shared` (`dataset.allow_shared_subjects`; the count is kept).
    """
    if "split" in windows.meta:
        return _predefined_split(windows, fold, allow_shared)
    if not 0 <= fold < n_folds:
        raise DataError(f"dataset.fold={fold} is out of range: choose 0..{n_folds - 1} (dataset.n_folds={n_folds})")
    if n_folds < 3:
        raise DataError(f"dataset.n_folds={n_folds}: train, val and test need at least 3 folds")
    folds = subject_folds(windows.labels, windows.subjects, n_folds, seed)
    test_idx, val_idx = folds[fold], folds[(fold + 1) % n_folds]
    train_idx = np.sort(np.concatenate([f for i, f in enumerate(folds) if i not in (fold, (fold + 1) % n_folds)]))
    splits = Splits(windows.subset(train_idx), windows.subset(val_idx), windows.subset(test_idx))
    _require_every_class(splits, f"of fold {fold}", "more subjects, fewer folds, or another seed")
    return splits


def _predefined_split(windows: WindowSet, fold: int, allow_shared: bool) -> Splits:
    split = np.asarray(windows.meta["split"])
    if split.dtype.kind in "USO":
        unknown = sorted(set(split.astype(str).tolist()) - set(SPLIT_NAMES))
        if unknown:
            raise DataError(f"meta['split'] holds {unknown}; a predefined split uses the names {list(SPLIT_NAMES)}")
        codes = np.array([SPLIT_NAMES.index(s) for s in split.astype(str)], dtype=np.int64)
    else:
        codes = split.astype(np.int64)
    if fold != 0:  # a fold sweep would give k identical runs that a report would average as k folds
        raise DataError(
            f"dataset.fold={fold}: the dataset brings its own train/val/test split (meta['split']), which has one "
            "fold only. Fix: dataset.fold=0 (and no fold sweep), or put all files in one folder so that the suite "
            "makes subject-wise folds itself."
        )
    log.info("the dataset brings its own train/val/test split (meta['split']): it is used as it is")
    index = {name: np.flatnonzero(codes == i) for i, name in enumerate(SPLIT_NAMES)}
    empty = [name for name, idx in index.items() if len(idx) == 0]
    if empty:
        raise DataError(
            f"the dataset's predefined split has no {' and no '.join(empty)} window; train, val and "
            "test are all needed. Fix: add them, or remove the split folders so that the suite "
            "splits subject-wise itself."
        )
    people = {name: set(np.unique(windows.subjects[idx]).tolist()) for name, idx in index.items()}
    # every pair: a person in val and test means selection happened on test people, as surely as train and test
    overlaps = {
        f"{a} and {b}": people[a] & people[b] for a, b in (("train", "val"), ("train", "test"), ("val", "test"))
    }
    overlaps = {pair: found for pair, found in overlaps.items() if found}
    shared = set().union(*overlaps.values()) if overlaps else set()
    described = "; ".join(
        f"{len(found)} subject(s) in {pair} (e.g. {sorted(found)[:5]})" for pair, found in overlaps.items()
    )
    if shared and not allow_shared:
        raise DataError(
            f"the predefined split puts the same subjects in two splits: {described}. Evaluation would not be "
            "subject-wise. Fix: regenerate the split by subject, put all files in one folder so that the suite "
            "splits subject-wise itself, or dataset.allow_shared_subjects=true to accept it (the run is tagged "
            "split.shared_subjects)."
        )
    if shared:
        log.warning(
            "the predefined split puts the same subjects in two splits: %s; evaluation is not subject-wise "
            "(dataset.allow_shared_subjects=true)",
            described,
        )
    splits = Splits(*(windows.subset(index[name]) for name in SPLIT_NAMES), shared_subjects=len(shared))
    _require_every_class(splits, "of the predefined split", "a split that holds every class")
    return splits


def _require_every_class(splits: Splits, where: str, fix: str) -> None:
    for name, part in splits.items():
        counts = part.class_counts()
        missing = [c for c, n in counts.items() if n == 0]
        if missing:
            raise DataError(
                f"the {name} split {where} has no window of class(es) {missing} ({counts}); AUROC and "
                f"model selection would be undefined. Fix: {fix}."
            )


def describe_splits(splits: Splits) -> dict[str, dict]:
    """Class balance and subject count of each split (logged at the start of a run)."""
    out = {}
    for name, part in splits.items():
        counts = part.class_counts()
        total = max(len(part), 1)
        out[name] = {
            "windows": len(part),
            "subjects": int(len(np.unique(part.subjects))),
            **{f"n_{c}": n for c, n in counts.items()},
            **{f"frac_{c}": round(n / total, 4) for c, n in counts.items()},
        }
    return out


def pretrain_dataset(d: DatasetConf) -> tuple[DatasetConf, int]:
    """The unlabeled corpus and its seed: the synthetic generator (other subjects: another seed, derived from
    `dataset.split_seed`, not `seed`) or a real one.

    Its NaN or constant windows are dropped (counted), not refused: a long unlabeled recording always has some.
    """
    loader = DatasetLoader(d.pretrain)
    if loader != DatasetLoader.synthetic and not d.pretrain_root:
        raise ConfigError(f"dataset.pretrain={loader.value} needs dataset.pretrain_root=<directory of the corpus>")
    corpus = replace(
        d,
        name=loader.value,
        loader=loader,
        root=d.pretrain_root,
        n_subjects=d.pretrain_subjects,
        nonfinite=NonFinite.drop,
    )
    return corpus, d.split_seed + 10_000


def load_pretrain_corpus(d: DatasetConf, *, context_length: int, cache_dir: Path) -> tuple[WindowSet, RowView, RowView]:
    """The unlabeled corpus of `data: pretrain` stages, checked, and split by subject into train and validation
    (90/10, decided by `dataset.split_seed`: data, not model)."""
    corpus, seed = pretrain_dataset(d)
    windows = load_windows(corpus, seed=seed, cache_dir=cache_dir)
    windows = check_windows(windows, context_length, d.channels, corpus.nonfinite)
    subjects = np.unique(windows.subjects)
    rng = np.random.default_rng(d.split_seed)
    held_out = rng.choice(subjects, size=max(1, len(subjects) // 10), replace=False)
    is_val = np.isin(windows.subjects, held_out)
    log.info(
        "pretraining corpus %s: %d windows of %d subjects (%d held out for validation)",
        corpus.name,
        len(windows),
        len(subjects),
        int(is_val.sum()),
    )
    # views, not copies: a large memory-mapped corpus stays on disk and is read batch by batch
    return windows, RowView(windows.signals, np.flatnonzero(~is_val)), RowView(windows.signals, np.flatnonzero(is_val))
