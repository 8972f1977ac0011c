"""Inner cross-validation folds of an Optuna study (`search.inner_folds=k`, `search.inner_fold=j`).

A study of nested CV is bound to one outer split (test fold k, validation fold k+1). With inner folds each trial
is scored on k subject-wise folds of the outer *training and validation* subjects together, instead of on the one
outer validation fold: inner job j trains on the other k-1 inner folds and selects its epoch and reports its
objective on inner fold j. The outer test subjects are dropped before the inner split is made, so no inner job
trains, selects or tests on them. The inner job's `test` split is its inner validation fold again (the same
windows): every run has a test split, and its `test/*` metrics are inner-validation numbers, which the nested-CV
report never reads (inner runs carry the tag `optuna.inner_fold`; the outer test number is the refit's).

The inner folds are fixed by `dataset.split_seed` (every trial of the study sees the same folds, which the
Wilcoxon pruner's paired test needs) and stratified by label, grouped by subject (`subject_folds`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ttm_experiments.config.schema import SearchConf
from ttm_experiments.data.base import WindowSet
from ttm_experiments.errors import ConfigError

if TYPE_CHECKING:  # the sweeper checks the keys (`check`) without loading the data stack
    from ttm_experiments.data.prepare import Splits

log = logging.getLogger(__name__)

# the inner split's own random stream under dataset.split_seed (the outer folds use the seed itself)
INNER_STREAM = 0x1AAE5


def check(search: SearchConf) -> None:
    """`search.inner_folds` >= 2 and `search.inner_fold` in 0..k-1, both or neither; a refit names its study (before
    any data is read)."""
    k, j = search.inner_folds, search.inner_fold
    if search.refit and not search.tuned_in:
        raise ConfigError(
            "search.refit=true needs search.tuned_in=<study>: the refit is the outer-split run of that study's best "
            "trial (the sweeper sets both)"
        )
    if k is None and j is None:
        return
    if k is None:
        raise ConfigError(
            f"search.inner_fold={j} without search.inner_folds: the number of inner folds is needed to make them. "
            "Fix: search.inner_folds=<k> as well, or neither (train on the outer split)"
        )
    if k < 2:
        raise ConfigError(f"search.inner_folds={k}: inner cross-validation needs at least 2 folds (or null for none)")
    if j is None:
        raise ConfigError(
            f"search.inner_folds={k} but no search.inner_fold: the Optuna sweeper sets it for each inner job. "
            "Fix: run it as a study (ttm-train -m hparams_search=...), give search.inner_fold=<0..k-1> to train one "
            "inner fold, or search.inner_folds=null to train on the outer split"
        )
    if not 0 <= j < k:
        raise ConfigError(f"search.inner_fold={j} is out of range: choose 0..{k - 1} (search.inner_folds={k})")
    if search.refit:
        raise ConfigError("search.refit=true trains on the outer split: it takes search.inner_folds=null")


def _concat(a: WindowSet, b: WindowSet) -> WindowSet:
    return WindowSet(
        signals=np.concatenate([np.asarray(a.signals), np.asarray(b.signals)]),
        labels=np.concatenate([a.labels, b.labels]),
        subjects=np.concatenate([a.subjects, b.subjects]),
        class_names=a.class_names,
        fs=a.fs,
        meta={key: np.concatenate([a.meta[key], b.meta[key]]) for key in a.meta if key in b.meta},
    )


def inner_split(splits: "Splits", k: int, j: int, seed: int) -> "Splits":
    """Inner fold `j` of `k` of the outer split's training and validation subjects: train on the other inner folds,
    validate (and "test") on fold j. The outer test split is not part of the result."""
    from ttm_experiments.data.prepare import Splits, _require_every_class, subject_folds

    pool = _concat(splits.train, splits.val)
    inner_seed = int(np.random.SeedSequence([seed, INNER_STREAM]).generate_state(1)[0])
    folds = subject_folds(pool.labels, pool.subjects, k, inner_seed)
    val_idx = np.sort(folds[j])
    train_idx = np.sort(np.concatenate([f for i, f in enumerate(folds) if i != j]))
    val = pool.subset(val_idx)
    inner = Splits(pool.subset(train_idx), val, val, shared_subjects=splits.shared_subjects)
    _require_every_class(
        inner,
        f"of inner fold {j} of {k}",
        "fewer inner folds (search.inner_folds), more subjects, or another dataset.split_seed",
    )
    log.info(
        "inner fold %d of %d of the outer training and validation subjects (%d): its test split is its inner "
        "validation fold; the outer test fold's %d subjects are not used",
        j,
        k,
        len(np.unique(pool.subjects)),
        len(np.unique(splits.test.subjects)),
    )
    return inner
