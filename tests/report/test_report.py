"""`ttm-report` on an MLflow store with a few real smoke runs: two finished runs and one pruned Optuna trial.

The pruned trial also checks per-epoch pruning inside a job, in-process: the job gets its trial through
`search.*` overrides only and finds it in the storage.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers.configs import compose_config, compose_report
from ttm_experiments.errors import ConfigError, Pruned

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import optuna
    from optuna.distributions import FloatDistribution

    from ttm_experiments.cli.train import train

    runs = tmp_path_factory.mktemp("report") / "runs"
    base = ["debug=tiny", f"paths.runs_dir={runs}", "experiment_name=rep", "trainer.num_threads=1"]
    for lr, last_n in [("1e-3", 1), ("3e-3", 2)]:
        train(compose_config([*base, f"optim.lr={lr}", f"unfreeze.last_n={last_n}"]))
    storage = f"sqlite:///{runs}/optuna.db"
    study = optuna.create_study(study_name="rep-study", storage=storage, direction="maximize")
    trial = study.ask({"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)})
    cfg = compose_config(
        [
            *base,
            f"optim.lr={trial.params['optim.lr']}",
            "search.study_name=rep-study",
            f"search.storage='{storage}'",
            f"search.trial_number={trial.number}",
            "search.pruner='threshold:lower=1.01,n_warmup_steps=2'",
        ]
    )
    with pytest.raises(Pruned, match="pruned after epoch 2"):
        train(cfg)
    return runs, study


def test_a_job_prunes_its_own_trial_through_the_storage(store):
    runs, study = store
    trial = study.get_trials()[0]
    assert trial.state.name == "PRUNED"
    assert sorted(trial.intermediate_values) == [1, 2]
    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    run = client.get_run(trial.user_attrs["mlflow.run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["optuna.state"] == "PRUNED" and run.data.tags["optuna.study"] == "rep-study"
    assert run.data.tags["pruned"].startswith("Pruned: trial 0")


def test_report_writes_table_and_plots_and_logs_them(store):
    from ttm_experiments.cli.report import report

    runs, _ = store
    result = report(compose_report([f"paths.runs_dir={runs}", "experiment_name=rep"]))
    out = runs / "reports" / "rep"
    for name in ("report.md", "runs.csv", "auroc_heatmap.png", "per_class_accuracy.png", "epochs.png"):
        assert (out / name).is_file(), name
    for name in ("auroc_heatmap.png", "per_class_accuracy.png", "epochs.png"):
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 10_000
    rows = result["rows"]
    assert [r.state for r in rows] == ["finished", "finished", "pruned"]
    assert rows[0].objective >= rows[1].objective  # ranked by val/auroc at the best epoch
    md = (out / "report.md").read_text()
    assert "test AUROC [95% CI]" in md and "test acc poor" in md and "test acc good" in md and "collapse" in md
    best = rows[0].metrics
    if "test/auroc_ci_low" in best:
        assert f"[{best['test/auroc_ci_low']:.3f}, {best['test/auroc_ci_high']:.3f}]" in md
    assert "![" in md and "(auroc_heatmap.png)" in md
    csv_lines = (out / "runs.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("rank,run_id")
    client = MlflowClient(tracking_uri=f"sqlite:///{runs}/mlflow.db")
    logged = client.get_run(result["run_id"])
    assert logged.data.tags["ttm.kind"] == "report"
    assert {"report/report.md", "report/epochs.png"} <= {
        a.path for a in client.list_artifacts(result["run_id"], "report")
    }
    # a second report does not count the first one's run
    again = report(compose_report([f"paths.runs_dir={runs}", "experiment_name=rep", "report.log_to_mlflow=false"]))
    assert len(again["rows"]) == 3


def test_report_of_one_study(store, tmp_path: Path):
    from ttm_experiments.cli.report import report

    runs, _ = store
    result = report(
        compose_report(
            [
                f"paths.runs_dir={runs}",
                "experiment_name=rep",
                "report.sweep=rep-study",
                f"report.out_dir={tmp_path}",
                "report.log_to_mlflow=false",
            ]
        )
    )
    assert [r.tags["optuna.study"] for r in result["rows"]] == ["rep-study"]
    assert (tmp_path / "epochs.png").is_file() and (tmp_path / "report.md").is_file()
    assert not (tmp_path / "auroc_heatmap.png").exists()  # no finished run in that study


def test_report_names_a_missing_experiment(store):
    from ttm_experiments.cli.report import report

    runs, _ = store
    with pytest.raises(ConfigError, match=r"no such MLflow experiment.*'rep'"):
        report(compose_report([f"paths.runs_dir={runs}", "report.experiment=nope"]))
