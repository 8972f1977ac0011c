"""Nested tuning: a study is bound to one outer fold and split seed; its objective never reads the
outer fold's test split."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.configs import compose_config
from ttm_experiments.errors import ConfigError
from ttm_experiments.search.nested import bind_study, refuse_swept_fold


def _study(tmp_path, name="s"):
    return optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db", load_if_exists=True)


def test_a_new_study_records_its_outer_fold_and_split_seed(tmp_path):
    study = _study(tmp_path)
    bind_study(study, {"dataset.fold": 2, "dataset.split_seed": 7}, "optuna.db")
    assert {k: _study(tmp_path).user_attrs[k] for k in ("dataset.fold", "dataset.split_seed")} == {
        "dataset.fold": 2,
        "dataset.split_seed": 7,
    }
    bind_study(_study(tmp_path), {"dataset.fold": 2, "dataset.split_seed": 7}, "optuna.db")  # same fold: resumes


@pytest.mark.parametrize(
    "bound, needle",
    [
        ({"dataset.fold": 3, "dataset.split_seed": 0}, "bound to dataset.fold=1, but this sweep has dataset.fold=3"),
        ({"dataset.fold": 1, "dataset.split_seed": 5}, "dataset.split_seed=0, but this sweep has dataset.split_seed=5"),
    ],
)
def test_resuming_on_another_fold_or_split_seed_is_refused(tmp_path, bound, needle):
    study = _study(tmp_path)
    bind_study(study, {"dataset.fold": 1, "dataset.split_seed": 0}, "optuna.db")
    with pytest.raises(ConfigError, match=needle):
        bind_study(_study(tmp_path), bound, "optuna.db")
    assert _study(tmp_path).user_attrs["dataset.fold"] == 1 and not _study(tmp_path).trials


def test_an_unbound_study_with_trials_is_refused(tmp_path):
    study = _study(tmp_path)
    study.enqueue_trial({})
    with pytest.raises(ConfigError, match="no recorded outer fold.*hydra.sweeper.study_name"):
        bind_study(_study(tmp_path), {"dataset.fold": 0, "dataset.split_seed": 0}, "optuna.db")


def test_sweeping_the_fold_inside_a_study_is_refused():
    with pytest.raises(ConfigError, match="dataset.fold is swept inside one Optuna study.*make nested-cv"):
        refuse_swept_fold({"dataset.fold": "choice(0, 1)", "optim.lr": "x"})


def test_default_study_name_holds_fold_and_split_seed():
    from hydra import compose, initialize_config_dir

    from ttm_experiments.cli.common import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hparams_search=unfreeze_lr", "dataset.fold=3", "dataset.n_folds=7", "dataset.split_seed=4"],
            return_hydra_config=True,
        )
    assert cfg.hydra.sweeper.study_name.endswith("-fold3-of7-split4")


@pytest.mark.slow
def test_the_objective_never_reads_the_test_split(tmp_path, monkeypatch):
    """Two runs whose test splits differ (labels shuffled, signals noise) return the same objective: within a
    study, selection is validation-only; only the reported test metrics change."""
    from ttm_experiments.cli.train import train
    from ttm_experiments.training import recipe

    base = ["debug=tiny", "trainer.num_threads=1", "experiment_name=nest"]
    clean = train(compose_config([*base, f"paths.runs_dir={tmp_path / 'a'}"]))
    original = recipe.load_splits

    def scrambled(c):
        s = original(c)
        rng = np.random.default_rng(0)
        noise = rng.normal(size=s.test.signals.shape).astype(s.test.signals.dtype)
        return replace(s, test=replace(s.test, signals=noise, labels=rng.permutation(s.test.labels)))

    monkeypatch.setattr(recipe, "load_splits", scrambled)
    other = train(compose_config([*base, f"paths.runs_dir={tmp_path / 'b'}"]))
    assert other == clean
    aurocs = [
        MlflowClient(f"sqlite:///{tmp_path / d}/mlflow.db")
        .search_runs(["1"], "tags.schedule LIKE '%'")[0]
        .data.metrics["test/auroc"]
        for d in "ab"
    ]
    assert aurocs[0] != aurocs[1]
