"""Nested cross-validation: an Optuna study is bound to one outer split.

Fold k tests on fold k and validates on fold k+1, and a trial's objective is its validation metric, so a
study on fold k selects without seeing fold k's test subjects; its best trial's test AUROC is the outer
estimate for fold k. Everything that defines the outer split is bound to the study (user attrs: the fold, the
number of folds, the split seed, the dataset's name and root; the jobs add the digest of the dataset's windows,
`training/trial.py`), so a study refuses to continue on another layout, which would pick hyperparameters on
another fold's test subjects.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from ttm_experiments.errors import ConfigError

BOUND_KEYS = ("dataset.fold", "dataset.n_folds", "dataset.split_seed", "dataset.loader", "dataset.name", "dataset.root")


def outer_fold(config: Any) -> dict[str, Optional[int]]:
    """The sweep's outer split (fold, number of folds, split seed, dataset), read from its composed config (null
    where the config has none)."""
    from omegaconf import OmegaConf

    values = {key: OmegaConf.select(config, key, default=None) for key in BOUND_KEYS}
    return {key: v.value if isinstance(v, Enum) else v for key, v in values.items()}  # JSON for the user attrs


def refuse_swept_fold(distributions: dict, fixed: dict | None = None) -> None:
    """A study samples hyperparameters for one outer split: sweeping what defines it inside the study would mix
    folds."""
    swept = [k for k in (*BOUND_KEYS, "dataset") if k in distributions]
    pinned = [k for k in (*BOUND_KEYS, "dataset") if k in (fixed or {})]
    if pinned:  # a value in hydra.sweeper.params is not in the sweep's config, which the study is bound to
        raise ConfigError(
            f"{pinned[0]} is set in hydra.sweeper.params ({fixed[pinned[0]]}); the study is bound to the outer split "
            f"of the command's own config. Fix: give it on the command line instead (`ttm-train -m "
            f"hparams_search=<space> {fixed[pinned[0]]}`)"
        )
    if swept:
        raise ConfigError(
            f"{swept[0]} is swept inside one Optuna study ({distributions[swept[0]]}); a study is bound "
            "to one outer split (fold, number of folds, split seed, dataset). Fix: one study per fold, e.g. "
            "`make nested-cv` or "
            f"`ttm-train -m hparams_search=<space> {swept[0]}=<k>` for each k"
        )


def bind_study(study, bound: dict[str, Optional[int]], storage: str) -> None:
    """Record the study's outer split (`bound`: key -> value), or refuse to continue it on another one (before
    any trial)."""
    attrs = study.user_attrs
    n_trials = len(study.get_trials(deepcopy=False))
    missing = [k for k in bound if k not in attrs]
    if n_trials and missing:
        raise ConfigError(
            f"study '{study.study_name}' in {storage} has {n_trials} trials but no recorded outer fold or layout "
            f"({', '.join(missing)}; made before studies were bound to their whole outer split): its trials may "
            "come from another layout. Fix: start a new study, hydra.sweeper.study_name=<new name>"
        )
    clash = {k: (attrs[k], v) for k, v in bound.items() if k in attrs and attrs[k] != v}
    if clash:
        seen = ", ".join(f"{k}={old}" for k, (old, _) in clash.items())
        asked = ", ".join(f"{k}={new}" for k, (_, new) in clash.items())
        raise ConfigError(
            f"study '{study.study_name}' in {storage} is bound to {seen}, but this sweep has {asked}: "
            "continuing it would tune on another fold's subjects. Fix: the study of that split "
            "(its default name holds fold, number of folds and split seed) or hydra.sweeper.study_name=<new name>"
        )
    for key, value in bound.items():
        study.set_user_attr(key, value)
