"""Nested tuning: a study is bound to one outer fold and split seed; its objective never reads the
outer fold's test split."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import optuna
import pytest
from conftest import compose_config
from mlflow.tracking import MlflowClient

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
            overrides=["hparams_search=unfreeze_lr", "dataset.fold=3", "dataset.split_seed=4"],
            return_hydra_config=True,
        )
    assert cfg.hydra.sweeper.study_name.endswith("-fold3-split4")


@pytest.mark.slow
def test_the_objective_never_reads_the_test_split(tmp_path, monkeypatch):
    """Two runs whose test splits differ (labels shuffled, signals noise) return the same objective: within a
    study, selection is validation-only; only the reported test metrics change."""
    from ttm_experiments.cli.train import train
    from ttm_experiments.training import recipe

    base = ["debug=smoke", "trainer.num_threads=1", "experiment_name=nest"]
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


def _row(name, fold, *, study=None, tuned_in=None, auroc=0.8, objective=0.7):
    from ttm_experiments.report.runs import Row

    params = {"dataset.fold": str(fold), **({"search.tuned_in": tuned_in} if tuned_in else {})}
    tags = {"optuna.study": study, "optuna.trial": "0"} if study else {}
    return Row(
        run_id=name,
        name=name,
        state="finished",
        params=params,
        tags=tags,
        metrics={"test/auroc": auroc},
        metric="val/auroc",
        objective=objective,
    )


def test_report_aggregates_each_studys_best_trial_across_outer_folds():
    from ttm_experiments.report.nested import nested_markdown

    rows = [
        _row("a", 0, study="s-fold0-split0", auroc=0.70),
        _row("a2", 0, study="s-fold0-split0", auroc=0.99, objective=0.1),
        _row("b", 1, study="s-fold1-split0", auroc=0.80),
        _row("c", 2, study="s-fold2-split0", auroc=0.90),
    ]
    text = "\n".join(nested_markdown(rows))
    assert "Nested cross-validation: `s` (3 outer folds)" in text
    assert "mean 0.800, sd 0.100" in text and "0.990" not in text  # the best trial by objective, not by test
    assert "Warning" not in text


def test_report_flags_a_config_tuned_on_one_fold_and_tested_on_others():
    from ttm_experiments.report.nested import mixing_notes

    rows = [
        _row("t", 0, study="s-fold0-split0"),
        _row("cv0", 0, tuned_in="s-fold0-split0"),
        _row("cv3", 3, tuned_in="s-fold0-split0"),
        _row("m1", 1, study="mixed"),
        _row("m2", 2, study="mixed"),
    ]
    notes = mixing_notes(rows)
    assert len(notes) == 2
    assert any("run `cv3` tests fold 3" in n and "study `s-fold0-split0` on fold(s) ['0']" in n for n in notes)
    assert any("study `mixed` holds trials of folds ['1', '2']" in n for n in notes)


def test_new_keys_compose_with_their_types():
    from test_report import compose_report

    r = compose_report(["report.compare=schedule", "report.baseline=head_only"]).report
    assert (r.compare, r.baseline) == ("schedule", "head_only")
    assert compose_config(["search.tuned_in=s-fold0-split0"]).search.tuned_in == "s-fold0-split0"
