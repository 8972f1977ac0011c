"""A study is bound to everything that defines its outer split (fold, number of folds, split seed, dataset, and the
windows' digest); the nested report never averages studies of different layouts."""

from __future__ import annotations

import optuna
import pytest

from tests.helpers.configs import compose_config
from ttm_experiments.errors import ConfigError
from ttm_experiments.report.runs import Row
from ttm_experiments.search.nested import BOUND_KEYS, bind_study, outer_fold
from ttm_experiments.training.trial import bind_dataset_digest


def _study(tmp_path, name="s"):
    return optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db", load_if_exists=True)


def test_the_sweep_binds_fold_number_of_folds_split_seed_and_dataset():
    cfg = compose_config(["dataset.fold=2", "dataset.n_folds=3", "dataset.split_seed=4"])
    assert set(BOUND_KEYS) >= {"dataset.fold", "dataset.n_folds", "dataset.split_seed", "dataset.name"}
    bound = outer_fold(cfg)
    assert (bound["dataset.fold"], bound["dataset.n_folds"], bound["dataset.split_seed"]) == (2, 3, 4)


def test_a_five_fold_study_refuses_a_three_fold_sweep_before_any_trial(tmp_path):
    five = {"dataset.fold": 0, "dataset.n_folds": 5, "dataset.split_seed": 0, "dataset.name": "synthetic"}
    study = _study(tmp_path)
    bind_study(study, five, "optuna.db")
    study.enqueue_trial({})
    with pytest.raises(ConfigError, match=r"bound to dataset.n_folds=5, but this sweep has dataset.n_folds=3"):
        bind_study(_study(tmp_path), {**five, "dataset.n_folds": 3}, "optuna.db")
    with pytest.raises(ConfigError, match=r"dataset.name=synthetic, but this sweep has dataset.name=butppg"):
        bind_study(_study(tmp_path), {**five, "dataset.name": "butppg"}, "optuna.db")
    assert len(_study(tmp_path).get_trials()) == 1  # nothing was asked


def test_a_trial_on_other_windows_than_the_studys_is_refused(tmp_path):
    study = _study(tmp_path)
    bind_dataset_digest(study, "aaaa", "optuna.db")
    bind_dataset_digest(_study(tmp_path), "aaaa", "optuna.db")  # the same windows: fine
    with pytest.raises(ConfigError, match=r"windows have digest aaaa; this trial's windows have digest bbbb"):
        bind_dataset_digest(_study(tmp_path), "bbbb", "optuna.db")


def _best(study: str, fold: int, n_folds: int, auroc: float) -> Row:
    params = {"dataset.fold": str(fold), "dataset.n_folds": str(n_folds), "dataset.split_seed": "0"}
    tags = {"optuna.study": study, "optuna.trial": "0"}
    return Row(study, study, "finished", params, tags, {"test/auroc": auroc}, "val/auroc", objective=0.7)


def test_the_nested_report_keeps_layouts_apart():
    from ttm_experiments.report.nested import nested_markdown

    rows = [_best(f"s-fold{k}-of5-split0", k, 5, 0.8) for k in range(5)]
    rows += [_best(f"s-fold{k}-of3-split0", k, 3, 0.6) for k in range(3)]
    text = "\n".join(nested_markdown(rows))
    assert "`s` (5 of 5 outer folds, split seed 0)" in text and "mean 0.800, sd 0.000" in text
    assert "`s` (3 of 3 outer folds, split seed 0)" in text and "mean 0.600, sd 0.000" in text


def test_a_study_refuses_the_outer_split_swept_or_pinned_in_its_search_space():
    from ttm_experiments.search.nested import refuse_swept_fold

    with pytest.raises(ConfigError, match=r"dataset is swept inside one Optuna study"):
        refuse_swept_fold({"dataset": "choice(synthetic, butppg)"})
    with pytest.raises(ConfigError, match=r"dataset.fold is set in hydra.sweeper.params.*on the command line"):
        refuse_swept_fold({}, {"dataset.fold": "dataset.fold=3"})
    refuse_swept_fold({"optim.lr": "interval(1e-4, 1e-3)"}, {})  # the rest is the study's to search


def test_a_real_sweep_config_binds_a_study_with_json_values(tmp_path):
    cfg = compose_config(["dataset.fold=1"])
    study = _study(tmp_path)
    bind_study(study, outer_fold(cfg), "optuna.db")  # Enum values (dataset.loader) must be JSON for Optuna
    assert _study(tmp_path).user_attrs["dataset.loader"] == "synthetic"
    assert _study(tmp_path).user_attrs["dataset.fold"] == 1
