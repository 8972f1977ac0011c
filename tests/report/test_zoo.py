"""The model zoo's report (report/zoo.py, `ttm-report report.zoo=true`): curves of test AUROC vs label fraction with
seed-and-subject intervals, and paired tables against the best TTM (chosen on validation) and the SQI baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.configs import compose_config, compose_report
from ttm_experiments.cli.report import report
from ttm_experiments.errors import ConfigError
from ttm_experiments.report.paired import PairedFold
from ttm_experiments.report.zoo import auroc_interval

PNG = b"\x89PNG\r\n\x1a\n"
EXPERIMENT = "zoo-test"


def fold(n_subjects: int, seed: int, signal: float) -> PairedFold:
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(n_subjects), 10)
    labels = (rng.random(len(subjects)) < 0.4).astype(np.int64)
    p = np.clip(0.5 + signal * (labels - 0.5) + rng.normal(0, 0.3, len(labels)), 0.01, 0.99)
    probs = np.column_stack([1 - p, p])
    return PairedFold(labels, subjects.astype(str), probs, probs)


def test_the_interval_widens_with_seed_spread_and_holds_the_mean_of_the_seeds():
    same = [[fold(12, 0, 0.4), fold(12, 0, 0.4)]]  # two identical seeds: subjects alone vary
    spread = [[fold(12, 0, 0.1), fold(12, 0, 0.7)]]  # two seeds far apart
    est_same, low_same, high_same = auroc_interval(same)
    est_spread, low_spread, high_spread = auroc_interval(spread)
    assert low_same <= est_same <= high_same and low_spread <= est_spread <= high_spread
    assert high_spread - low_spread > high_same - low_same
    from sklearn.metrics import roc_auc_score

    expected = np.mean([roc_auc_score(f.labels, f.probs_a[:, 1]) for f in spread[0]])
    assert est_spread == pytest.approx(expected)


@pytest.fixture(scope="module")
def zoo_store(tmp_path_factory):
    """Real smoke runs: ttm_tiny with two schedules x two fractions x two seeds, and the SQI baseline (one seed)."""
    from ttm_experiments.cli.train import train

    runs = tmp_path_factory.mktemp("zoo") / "runs"
    base = ["debug=tiny", f"paths.runs_dir={runs}", f"experiment_name={EXPERIMENT}", "trainer.num_threads=1"]
    for schedule in ("linear_probe", "head_only"):
        for fraction in ("0.5", "1.0"):
            for seed in (0, 1):
                train(
                    compose_config(
                        [*base, f"schedule={schedule}", f"dataset.label_fraction={fraction}", f"seed={seed}"]
                    )
                )
    for fraction in ("0.5", "1.0"):
        train(compose_config([*base, "backbone=baseline_sqi", f"dataset.label_fraction={fraction}"]))
    return runs


def _runs(runs) -> pd.DataFrame:
    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    found = client.search_runs([exp], "tags.schedule LIKE '%'")
    rows = [
        {
            "backbone": r.data.params["backbone.name"],
            "schedule": r.data.params["schedule.name"],
            "fraction": float(r.data.params["dataset.label_fraction"]),
            "seed": r.data.params["seed"],
            "test_auroc": r.data.metrics["test/auroc"],
            "val_auroc": r.data.metrics["best/val_auroc"] if "best/val_auroc" in r.data.metrics else np.nan,
        }
        for r in found
        if "stage" not in r.data.tags
    ]
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_the_zoo_report_from_real_runs(zoo_store, tmp_path):
    out = tmp_path / "zoo"
    result = report(
        compose_report(
            [
                f"paths.runs_dir={zoo_store}",
                f"report.experiment={EXPERIMENT}",
                "report.zoo=true",
                f"report.out_dir={out}",
            ]
        )
    )
    runs = _runs(zoo_store)
    points = {(p.model, p.fraction): p for p in result["points"]}
    assert set(points) == {
        (m, f) for m in ("ttm_tiny / linear_probe", "ttm_tiny / head_only", "baseline_sqi") for f in (0.5, 1.0)
    }
    for (model, fraction), p in points.items():
        backbone, _, schedule = model.partition(" / ")
        mine = runs[(runs.backbone == backbone) & (runs.fraction == fraction)]
        mine = mine[mine.schedule == schedule] if schedule else mine
        # the point is the mean of the runs' own test AUROC (one fold: the mean over its seeds)
        assert p.auroc == pytest.approx(mine.test_auroc.mean(), abs=1e-6)
        assert p.low <= p.auroc <= p.high and p.folds == 1 and p.seeds == len(mine)
    # the best TTM is chosen on validation at the largest fraction, never on test
    full = runs[(runs.fraction == 1.0) & (runs.backbone == "ttm_tiny")].groupby("schedule").val_auroc.mean()
    best = f"ttm_tiny / {full.idxmax()}"
    assert (out / "zoo.md").read_text().count(f"Best TTM: **{best}**") == 1
    vs_best = [r for r in result["paired"] if r.reference == best]
    other = {"ttm_tiny / linear_probe", "ttm_tiny / head_only"} - {best}
    assert {(r.model, r.fraction) for r in vs_best} == {(m, f) for m in (*other, "baseline_sqi") for f in (0.5, 1.0)}
    for r in vs_best:
        # two seeds of each TTM; the baseline ran seed 0 only and, not depending on the seed, pairs with both
        assert r.difference.n_seeds == 2
        a, b = points[(r.model, r.fraction)], points[(best, r.fraction)]
        assert r.difference.estimate == pytest.approx(a.auroc - b.auroc, abs=1e-6)
    assert points[("baseline_sqi", 1.0)].seeds == 1
    assert {r.reference for r in result["paired"]} == {best, "baseline_sqi"}
    assert (out / "zoo_curve.png").read_bytes()[:8] == PNG
    assert len(pd.read_csv(out / "zoo_points.csv")) == 6
    # logged as a report run of the experiment's reports experiment
    client = MlflowClient(tracking_uri=f"sqlite:///{zoo_store}/mlflow.db")
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "report")}
    assert "report/zoo_curve.png" in artifacts and "report/zoo.md" in artifacts


def test_an_experiment_without_runs_is_refused(tmp_path):
    from ttm_experiments.tracking.mlflow_tracker import MlflowTracker

    runs = tmp_path / "runs"
    runs.mkdir()
    MlflowTracker(f"sqlite:///{runs}/mlflow.db", "empty")
    with pytest.raises(ConfigError, match="report.zoo: no finished ttm-train run"):
        report(compose_report([f"paths.runs_dir={runs}", "report.experiment=empty", "report.zoo=true"]))
