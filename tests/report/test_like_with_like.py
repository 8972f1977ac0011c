"""The report compares like with like: ranking by the selection metric's own direction, heatmap cells that pool only
runs differing in their axes, weak intervals flagged, sentinel values resolved, report runs kept apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ttm_experiments.report.runs import Row, collect, connect, poolable, shown_value


def _store(tmp_path: Path, runs: list[dict]) -> str:
    """A real MLflow store with finished training runs: params, a val history, and test metrics."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("exp", artifact_location=(tmp_path / "art").as_uri())
    for spec in runs:
        run = client.create_run(experiment, run_name=spec["name"], tags={"schedule": "progressive"})
        for key, value in spec["params"].items():
            client.log_param(run.info.run_id, key, value)
        for step, value in enumerate(spec["history"]):
            client.log_metric(run.info.run_id, spec["params"]["optimized_metric"], value, step=step)
        client.log_metric(run.info.run_id, "best/epoch", spec["best_epoch"])
        for key, value in spec.get("test", {}).items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    return uri


def test_a_minimised_selection_metric_ranks_the_lowest_first(tmp_path):
    uri = _store(
        tmp_path,
        [
            {"name": "high", "params": {"optimized_metric": "val/loss"}, "history": [0.9, 0.717], "best_epoch": 1},
            {"name": "low", "params": {"optimized_metric": "val/loss"}, "history": [0.8, 0.696], "best_epoch": 1},
        ],
    )
    client, experiment_id = connect(uri, "exp")
    rows, _ = collect(client, experiment_id, None, 100)
    assert [r.name for r in rows] == ["low", "high"]
    assert rows[0].objective == pytest.approx(0.696)


def _row(name: str, **params: str) -> Row:
    return Row(name, name, "finished", {"optim.lr": "0.001", **params}, {}, {}, "val/auroc")


def test_a_heatmap_pools_only_runs_that_differ_in_its_axes_seed_and_fold():
    rows = [
        _row("a", **{"unfreeze.last_n": "1", "seed": "0", "trainer.max_epochs_per_stage": "0"}),
        _row("b", **{"unfreeze.last_n": "2", "seed": "1", "dataset.fold": "1", "trainer.max_epochs_per_stage": "0"}),
        _row("smoke", **{"unfreeze.last_n": "1", "seed": "0", "trainer.max_epochs_per_stage": "1"}),
    ]
    kept, left_out = poolable(rows)
    assert [r.name for r in kept] == ["a", "b"]
    assert left_out == {"trainer.max_epochs_per_stage": ["1"]}
    same = [_row("a", seed="0"), _row("b", seed="1")]
    assert poolable(same) == (same, {})


def test_a_sentinel_value_is_shown_with_its_meaning():
    assert shown_value("trainer.max_epochs_per_stage", "0") == "0 (no cap: the schedule's epochs)"
    assert shown_value("trainer.max_epochs_per_stage", "3") == "3"


def test_an_interval_from_few_test_subjects_is_flagged_in_the_table():
    from ttm_experiments.report.table import display_table, records

    rows = [_row("few"), _row("many")]
    rows[0].metrics = {"test/auroc": 0.605, "test/auroc_ci_low": 0.6, "test/auroc_ci_high": 0.7, "test/n_subjects": 2}
    rows[1].metrics = {"test/auroc": 0.8, "test/auroc_ci_low": 0.7, "test/auroc_ci_high": 0.9, "test/n_subjects": 12}
    shown = display_table(rows, records(rows, []), [])
    cells = list(shown["test AUROC [95% CI]"])
    assert cells[0].endswith("(only 2 test subjects: weak)") and "only" not in cells[1]


def test_the_report_run_is_logged_beside_the_training_runs_not_among_them(tmp_path):
    from ttm_experiments.report.build import build_report, log_report

    uri = _store(
        tmp_path,
        [{"name": "r", "params": {"optimized_metric": "val/auroc"}, "history": [0.7, 0.8], "best_epoch": 1}],
    )
    result = build_report(uri=uri, experiment="exp", sweep=None, out_dir=tmp_path / "out")
    run_id = log_report(uri, "exp", None, result)
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment(client.get_run(run_id).info.experiment_id).name == "exp-reports"
    training = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert [r.info.run_name for r in training] == ["r"]


def test_a_comparison_takes_the_newest_run_of_a_setting_not_the_best_one():
    from ttm_experiments.report.compare import comparisons

    def run(name, schedule, start, auroc):
        params = {"schedule.name": schedule, "dataset.fold": "0", "seed": "0"}
        return Row(name, name, "finished", params, {}, {"test/auroc": auroc}, "val/auroc", start_time=start)

    # ranked best first, as collect() ranks them: the old, better run of `progressive` comes first
    rows = [run("old", "progressive", 1, 0.9), run("new", "progressive", 2, 0.7), run("base", "head_only", 1, 0.6)]
    (comp,) = comparisons(rows, "schedule", "head_only")
    assert [(a.name, b.name) for a, b in comp.runs[0]] == [("new", "base")]


def test_runs_selected_on_another_metric_are_never_pooled():
    rows = [_row("auroc", optimized_metric="val/auroc"), _row("loss", optimized_metric="val/loss")]
    kept, left_out = poolable(rows)
    assert [r.name for r in kept] == ["auroc"] and left_out == {"optimized_metric": ["val/loss"]}
