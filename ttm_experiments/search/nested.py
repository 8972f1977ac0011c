"""Nested cross-validation: an Optuna study is bound to one outer fold and split seed.

Fold k tests on fold k and validates on fold k+1, and a trial's objective is its validation metric, so a
study on fold k selects without seeing fold k's test subjects; its best trial's test AUROC is the outer
estimate for fold k. The binding (user attrs `dataset.fold`, `dataset.split_seed`) makes a study refuse to
continue on another fold or split seed, which would pick hyperparameters on another fold's test subjects.
"""

from __future__ import annotations

from typing import Any, Optional

from ttm_experiments.errors import ConfigError

BOUND_KEYS = ("dataset.fold", "dataset.split_seed")


def outer_fold(config: Any) -> dict[str, Optional[int]]:
    """The sweep's outer fold and split seed, read from its composed config (null where the config has none)."""
    from omegaconf import OmegaConf

    return {key: OmegaConf.select(config, key, default=None) for key in BOUND_KEYS}


def refuse_swept_fold(distributions: dict) -> None:
    """A study samples hyperparameters for one outer fold: sweeping the fold inside it would mix folds."""
    swept = [k for k in BOUND_KEYS if k in distributions]
    if swept:
        raise ConfigError(
            f"{swept[0]} is swept inside one Optuna study ({distributions[swept[0]]}); a study is bound "
            "to one outer fold and split seed. Fix: one study per fold, e.g. `make nested-cv` or "
            f"`ttm-train -m hparams_search=<space> {swept[0]}=<k>` for each k"
        )


def bind_study(study, bound: dict[str, Optional[int]], storage: str) -> None:
    """Record the study's outer fold and split seed, or refuse to continue it on other ones (before any trial)."""
    attrs = study.user_attrs
    n_trials = len(study.get_trials(deepcopy=False))
    if n_trials and not all(k in attrs for k in BOUND_KEYS):
        raise ConfigError(
            f"study '{study.study_name}' in {storage} has {n_trials} trials but no recorded outer fold "
            f"and split seed (made before studies were bound to a fold): its trials may come from any "
            f"fold. Fix: start a new study, hydra.sweeper.study_name=<new name>"
        )
    clash = {k: (attrs[k], v) for k, v in bound.items() if k in attrs and attrs[k] != v}
    if clash:
        seen = ", ".join(f"{k}={old}" for k, (old, _) in clash.items())
        asked = ", ".join(f"{k}={new}" for k, (_, new) in clash.items())
        raise ConfigError(
            f"study '{study.study_name}' in {storage} is bound to {seen}, but this sweep has {asked}: "
            "continuing it would tune on another fold's subjects. Fix: the study of that fold "
            "(its default name holds fold and split seed) or hydra.sweeper.study_name=<new name>"
        )
    for key, value in bound.items():
        study.set_user_attr(key, value)
