"""Inner cross-validation of an Optuna study (`search.inner_folds=k`): the inner folds, the steps and the mean in
the study's storage, the Wilcoxon pruner between folds, and the refit whose outer test the nested-CV report shows.

The fast tests read the real tiny dataset through `load_splits`. The pruning test runs a small Hydra app through this
sweeper as a process (its objective is a known function of the trial's value and the fold, so who loses is fixed);
the end-to-end test runs `ttm-train` studies on debug=tiny with a real SQLite Optuna storage and MLflow store.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import optuna
import pytest

from tests.helpers.configs import compose_config
from ttm_experiments.config.schema import SearchConf
from ttm_experiments.config.spec import to_config
from ttm_experiments.data import inner_folds
from ttm_experiments.errors import ConfigError
from ttm_experiments.search import inner_cv
from ttm_experiments.tracking.optuna_storage import build_pruner, pruner_spec


def _subjects(part) -> set[int]:
    return set(np.unique(part.subjects).tolist())


def _splits(tmp_path, *extra: str):
    from ttm_experiments.training.recipe import load_splits

    cfg = compose_config(["debug=tiny", f"paths.cache_dir={tmp_path}/cache", *extra])
    return load_splits(to_config(cfg))


@pytest.mark.parametrize("fold", [0, 3])
def test_inner_folds_partition_the_outer_train_and_val_subjects_and_never_hold_an_outer_test_subject(tmp_path, fold):
    outer = _splits(tmp_path, f"dataset.fold={fold}")
    outer_test, pool = _subjects(outer.test), _subjects(outer.train) | _subjects(outer.val)
    assert outer_test and not outer_test & pool
    vals = []
    for j in range(3):
        inner = _splits(tmp_path, f"dataset.fold={fold}", "search.inner_folds=3", f"search.inner_fold={j}")
        train, val = _subjects(inner.train), _subjects(inner.val)
        assert not (train | val) & outer_test, f"outer test subjects {sorted(outer_test)} in inner fold {j}"
        assert train | val == pool and not train & val
        assert inner.test is inner.val  # the inner job's "test" is its inner validation fold
        vals.append(val)
    assert set().union(*vals) == pool and sum(len(v) for v in vals) == len(pool)  # a partition
    again = _splits(tmp_path, f"dataset.fold={fold}", "search.inner_folds=3", "search.inner_fold=1")
    assert _subjects(again.val) == vals[1]  # fixed by dataset.split_seed: every trial gets the same folds


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"inner_fold": 1}, "search.inner_fold=1 without search.inner_folds"),
        ({"inner_folds": 1, "inner_fold": 0}, "at least 2 folds"),
        ({"inner_folds": 3}, "no search.inner_fold: the Optuna sweeper sets it"),
        ({"inner_folds": 3, "inner_fold": 3}, r"out of range: choose 0\.\.2"),
        ({"inner_folds": 3, "inner_fold": 0, "refit": True, "tuned_in": "s"}, "refit=true trains on the outer split"),
        ({"refit": True}, "search.refit=true needs search.tuned_in"),
    ],
)
def test_inconsistent_inner_fold_settings_are_refused_before_any_data(fields, needle):
    with pytest.raises(ConfigError, match=needle):
        inner_folds.check(SearchConf(**fields))


def test_a_study_keeps_its_number_of_inner_folds(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    inner_cv.bind(study, 3, "optuna.db")
    study.enqueue_trial({})
    inner_cv.bind(study, 3, "optuna.db")
    with pytest.raises(ConfigError, match="scored its trials with search.inner_folds=3; this sweep has .*=None"):
        inner_cv.bind(study, None, "optuna.db")
    old = optuna.create_study(study_name="old", storage=url, direction="maximize")
    old.enqueue_trial({})  # a study with trials and no record: it had one validation fold
    with pytest.raises(ConfigError, match="no inner folds"):
        inner_cv.bind(old, 2, "optuna.db")


def test_the_inner_cv_space_composes_with_the_wilcoxon_pruner_and_its_arguments():
    from hydra import compose, initialize_config_dir

    from ttm_experiments.cli.common import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=unfreeze_lr_inner_cv"], return_hydra_config=True)
    assert cfg.search.inner_folds == 3
    spec = pruner_spec(cfg.hydra.sweeper.pruner)
    assert spec == "wilcoxon:p_threshold=0.3,n_startup_steps=2"
    pruner = build_pruner(spec)
    assert isinstance(pruner, optuna.pruners.WilcoxonPruner)
    assert (pruner._p_threshold, pruner._n_startup_steps) == (0.3, 2)
    assert cfg.hydra.sweeper.study_name.startswith("unfreeze_lr_inner3-")


# -- pruning between folds: a Hydra app whose fold values are known ----------------------------------------------
APP = """\
import json, os
from dataclasses import dataclass, field
from typing import Optional

import hydra
from hydra.core.config_store import ConfigStore


@dataclass
class Search:  # the trial node the sweeper fills (hydra.sweeper.trial_node=search)
    study_name: Optional[str] = None
    storage: Optional[str] = None
    trial_number: Optional[int] = None
    pruner: Optional[str] = None
    direction: str = "maximize"
    inner_folds: Optional[int] = None
    inner_fold: Optional[int] = None
    refit: bool = False
    tuned_in: Optional[str] = None


@dataclass
class Config:
    x: float = 0.0
    log: str = "launched.jsonl"
    search: Search = field(default_factory=Search)


ConfigStore.instance().store(name="config", node=Config)


@hydra.main(version_base=None, config_name="config")
def main(cfg):
    s = cfg.search
    with open(cfg.log, "a") as fh:
        fh.write(json.dumps({"trial": s.trial_number, "fold": s.inner_fold, "folds": s.inner_folds,
                             "refit": s.refit, "tuned_in": s.tuned_in, "x": cfg.x}) + "\\n")
    return cfg.x + 0.1 * (s.inner_fold or 0)  # fold j of a trial with value x: x + 0.1 j


if __name__ == "__main__":
    main()
"""


def _sweep(tmp_path, x: float, p_threshold: float, name: str, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "app.py",
        "--multirun",
        f"x={x}",
        f"log={tmp_path / 'launched.jsonl'}",
        "search.inner_folds=3",
        "hydra/sweeper=optuna",
        "hydra.sweeper.trial_node=search",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        "hydra.sweeper.study_name=folds",
        f"hydra.sweeper.pruner={{type: wilcoxon, p_threshold: {p_threshold}, n_startup_steps: 2}}",
        f"hydra.sweep.dir={tmp_path / name}",
        *extra,
    ]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_wilcoxon_prunes_a_trial_that_loses_on_its_first_folds_and_launches_no_more_of_them(tmp_path):
    """Trial 0 (x=1) scores 1.0, 1.1, 1.2; trial 1 (x=0) scores 0.0, 0.1 on the same folds: both lose, the one-sided
    signed-rank p-value of 2 pairs is 0.25 < 0.3, so it is pruned and its fold 2 never runs. Trial 2 (x=0 again)
    with p_threshold 0.2 cannot be pruned before its last fold (2 pairs never reach p < 0.25): it runs all 3."""
    (tmp_path / "app.py").write_text(APP)
    _sweep(tmp_path, 1.0, 0.3, "s0")
    _sweep(tmp_path, 0.0, 0.3, "s1")
    _sweep(tmp_path, 0.0, 0.2, "s2")
    study = optuna.load_study(study_name="folds", storage=f"sqlite:///{tmp_path}/optuna.db")
    t0, t1, t2 = study.trials
    assert t0.state.name == "COMPLETE" and t0.intermediate_values == pytest.approx({0: 1.0, 1: 1.1, 2: 1.2})
    assert t0.value == pytest.approx(1.1)  # the mean of its 3 folds
    assert t1.state.name == "PRUNED" and t1.intermediate_values == pytest.approx({0: 0.0, 1: 0.1})
    assert t2.state.name == "COMPLETE" and t2.value == pytest.approx(0.1)
    assert study.best_trial.number == 0
    launched = [json.loads(line) for line in (tmp_path / "launched.jsonl").read_text().splitlines()]
    folds = [(r["trial"], r["fold"]) for r in launched if not r["refit"]]
    assert folds == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    refits = [r for r in launched if r["refit"]]
    # after each sweep the best configuration (trial 0's x=1) is trained once on the outer split
    assert refits == [{"trial": None, "fold": None, "folds": None, "refit": True, "tuned_in": "folds", "x": 1.0}] * 3


@pytest.mark.slow
def test_the_trials_of_a_batch_run_fold_by_fold_together(tmp_path):
    """n_jobs=2: fold 0 of both trials is one launch, then fold 1 of both, ...; the study gets each one's mean."""
    (tmp_path / "app.py").write_text(APP)
    _sweep(tmp_path, 0.5, 0.0, "s", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
    launched = [json.loads(line) for line in (tmp_path / "launched.jsonl").read_text().splitlines()]
    assert [(r["trial"], r["fold"]) for r in launched if not r["refit"]] == [
        (0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)
    ]  # fmt: skip
    study = optuna.load_study(study_name="folds", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.value for t in study.trials] == pytest.approx([0.6, 0.6])


# -- ttm-train end to end: steps, values, mean, refit, the nested report --------------------------------------------
@pytest.fixture(scope="module")
def inner_study(tmp_path_factory):
    """Two outer folds' inner-CV studies (3 inner folds, a Wilcoxon pruner that cannot prune): fold 0 with 2
    trials, fold 1 with 1."""
    from tests.helpers.runs import run_cli

    base = tmp_path_factory.mktemp("inner")
    runs, cache = base / "runs", base / "cache"
    common = [
        "hparams_search=unfreeze_lr_inner_cv",
        "hydra.sweeper.pruner.p_threshold=0",  # never prunes (p < 0): every trial runs its 3 folds
        "experiment_name=icv",
        "hydra.sweeper.sampler.n_startup_trials=2",
    ]
    run_cli(runs, *common, "dataset.fold=0", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={base}/f0", cache=cache)
    run_cli(runs, *common, "dataset.fold=1", "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={base}/f1", cache=cache)
    from mlflow.tracking import MlflowClient

    storage = f"sqlite:///{runs}/optuna.db"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    return {
        "runs": runs,
        "studies": [optuna.load_study(study_name=n, storage=storage) for n in names],
        "client": MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db"),
    }


@pytest.mark.slow
def test_each_trial_reports_its_inner_runs_objectives_as_steps_and_the_study_their_mean(inner_study):
    client = inner_study["client"]
    study = inner_study["studies"][0]
    assert study.study_name.endswith("-fold0-of5-split0") and study.user_attrs["inner_cv.folds"] == 3
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [0, 1, 2]
        for j, value in trial.intermediate_values.items():
            run = client.get_run(trial.user_attrs[f"mlflow.run_id.inner{j}"])
            assert run.data.tags["optuna.inner_fold"] == str(j) and run.data.tags["optuna.trial"] == str(trial.number)
            assert run.data.params["search.inner_fold"] == str(j)
            assert run.data.metrics["best/val_auroc"] == pytest.approx(value)  # what the inner run logged
        assert trial.value == pytest.approx(np.mean(list(trial.intermediate_values.values())))


@pytest.mark.slow
def test_the_refit_trains_the_best_configuration_on_the_outer_split_and_the_nested_report_shows_its_test(inner_study):
    from ttm_experiments.report.nested import nested_markdown
    from ttm_experiments.report.runs import collect, connect

    client = inner_study["client"]
    experiment = client.get_experiment_by_name("icv").experiment_id
    refits = {}
    for study in inner_study["studies"]:
        (run,) = client.search_runs(
            [experiment], f"tags.`optuna.refit` = 'true' and tags.`optuna.study` = '{study.study_name}'"
        )
        best = study.best_trial
        for key, value in best.params.items():
            assert float(run.data.params[key]) == pytest.approx(float(value))
        assert (
            run.data.params["search.inner_folds"] == "None" and run.data.params["search.tuned_in"] == study.study_name
        )
        assert run.data.params["dataset.fold"] == str(study.user_attrs["dataset.fold"])
        refits[study.study_name] = run
    _, exp_id = connect(f"sqlite:///{inner_study['runs']}/mlflow.db", "icv")
    rows, _ = collect(client, exp_id, None, 1000)
    text = "\n".join(nested_markdown(rows))
    table = [line for line in text.splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert len(table) == 2, text
    for line in table:
        fold, study_name, trial, _, test = (cell.strip() for cell in line.strip("|").split("|"))
        assert trial == "refit"
        assert test == f"{refits[study_name].data.metrics['test/auroc']:.3f}"
    inner = [r for r in rows if r.tags.get("optuna.inner_fold") is not None]
    assert len(inner) == 3 * 3  # (2 + 1 trials) x 3 inner folds, read by the report and left out of its table
    mean = np.mean([r.data.metrics["test/auroc"] for r in refits.values()])
    assert f"mean {mean:.3f}" in text


def test_the_nested_report_takes_an_inner_cv_study_from_its_refit_and_never_from_an_inner_run():
    from ttm_experiments.report.nested import best_trials
    from ttm_experiments.report.runs import Row

    def row(run_id, tags, auroc):
        return Row(run_id, run_id, "finished", {"dataset.fold": "0"}, tags, {"test/auroc": auroc}, "val/auroc", 0.9)

    inner = {"optuna.study": "cv", "optuna.trial": "0", "optuna.inner_fold": "0", "optuna.inner_folds": "3"}
    plain = {"optuna.study": "one", "optuna.trial": "2"}
    rows = [row("inner", inner, 0.99), row("plain", plain, 0.7)]
    assert {s: r.run_id for s, r in best_trials(rows).items()} == {"one": "plain"}  # no refit yet: not reported
    rows.append(row("refit", {"optuna.study": "cv", "optuna.refit": "true"}, 0.6))
    assert {s: r.run_id for s, r in best_trials(rows).items()} == {"one": "plain", "cv": "refit"}


@pytest.mark.parametrize(
    "spec, k, needle",
    [
        ("wilcoxon:p_threshold=0.1", 3, "smallest one-sided p-value is 0.25.*p_threshold=0.3"),
        ("wilcoxon:p_threshold=0.3", 3, None),
        ("wilcoxon", 5, None),  # 4 folds compared: 0.0625 < 0.1
        ("median:n_warmup_steps=5", 3, "n_warmup_steps=5 counts steps, here folds 0..2"),
        ("median:n_warmup_steps=1", 3, None),
    ],
)
def test_a_pruner_that_cannot_prune_before_the_last_fold_is_named(caplog, spec, k, needle):
    import logging

    with caplog.at_level(logging.WARNING, logger="ttm_experiments.search.inner_cv"):
        inner_cv.warn_if_never_prunes(spec, k)
    warned = [r.getMessage() for r in caplog.records]
    if needle is None:
        assert not warned
    else:
        assert len(warned) == 1 and re.search(needle, warned[0]), warned
