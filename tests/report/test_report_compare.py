"""ttm-report's paired comparisons on real smoke runs in a real MLflow store (SQLite in tmp)."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.configs import compose_config, compose_report
from ttm_experiments.errors import ConfigError

pytestmark = pytest.mark.slow  # five smoke runs: about 45 s on the shared machine


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from ttm_experiments.cli.train import train

    runs = tmp_path_factory.mktemp("compare") / "runs"
    base = ["debug=tiny", f"paths.runs_dir={runs}", "experiment_name=cmp", "trainer.num_threads=1"]
    for schedule, fold, seed in [
        ("progressive", 0, 0),
        ("head_only", 0, 0),
        ("progressive", 1, 0),
        ("head_only", 1, 0),
        ("head_only", 0, 1),
    ]:
        train(compose_config([*base, f"schedule={schedule}", f"dataset.fold={fold}", f"seed={seed}"]))
    return runs


def test_each_run_logs_its_test_predictions_per_window(calib):
    from ttm_experiments.report.runs import connect

    client, experiment_id = connect(f"sqlite:///{calib}/mlflow.db", "cmp")
    run = client.search_runs([experiment_id], "tags.schedule LIKE '%'")[0]
    frame = pd.read_csv(client.download_artifacts(run.info.run_id, "test/predictions.csv", str(calib.parent)))
    assert list(frame.columns) == ["subject", "label", "p_poor", "p_good"]
    assert frame[["p_poor", "p_good"]].sum(axis=1).round(4).eq(1).all() and frame["subject"].nunique() > 1


def test_report_pairs_runs_per_fold_and_across_folds(calib):
    from ttm_experiments.cli.report import report

    result = report(
        compose_report(
            [
                f"paths.runs_dir={calib}",
                "report.experiment=cmp",
                "report.compare=schedule",
                "report.baseline=head_only",
                "report.log_to_mlflow=false",
            ]
        )
    )
    (comp,) = result["comparisons"]  # head_only's seed 1 on fold 0 has no progressive partner: seed 0 only
    assert comp.seeds == ["0"]
    assert (comp.value, comp.baseline, sorted(comp.per_fold)) == ("progressive", "head_only", [0, 1])
    d = comp.per_fold[0]
    ((row, partner),) = comp.runs[0]
    assert d.estimate == pytest.approx(row.metrics["test/auroc"] - partner.metrics["test/auroc"], abs=1e-4)
    assert d.low <= d.estimate <= d.high and comp.combined is not None
    out = result["files"][0].parent
    text = (out / "report.md").read_text()
    assert "### schedule=progressive - schedule=head_only (1 seed)" in text and "all 2 folds (mean)" in text
    assert "distinguishable from zero" in text and (out / "paired_forest.png").stat().st_size > 0
    assert "it rests on one training run per fold" in text  # one seed: the verdict cannot speak to training
    assert "## Across seeds" in text  # head_only on fold 0 with seeds 0 and 1


def test_auto_detects_the_one_varying_setting(calib):
    from ttm_experiments.cli.report import report

    result = report(
        compose_report(
            [
                f"paths.runs_dir={calib}",
                "report.experiment=cmp",
                "report.log_to_mlflow=false",
                f"report.out_dir={calib.parent / 'auto'}",
            ]
        )
    )
    assert {c.setting for c in result["comparisons"]} == {"schedule"}
    assert {c.baseline for c in result["comparisons"]} == {"head_only"}  # the first value in sorted order


@pytest.mark.parametrize(
    "override, match",
    [("report.compare=nope", "report.compare='nope'"), ("report.baseline=full", "report.baseline='full'")],
)
def test_a_wrong_comparison_is_refused_before_any_file(calib, tmp_path, override, match):
    from ttm_experiments.cli.report import report

    out = tmp_path / "never"
    runs_before = len(MlflowClient(f"sqlite:///{calib}/mlflow.db").search_runs(["1"]))
    with pytest.raises(ConfigError, match=match):
        report(
            compose_report(
                [
                    f"paths.runs_dir={calib}",
                    "report.experiment=cmp",
                    override,
                    *(["report.compare=schedule"] if "baseline" in override else []),
                    f"report.out_dir={out}",
                ]
            )
        )
    assert not out.exists()
    assert len(MlflowClient(f"sqlite:///{calib}/mlflow.db").search_runs(["1"])) == runs_before
