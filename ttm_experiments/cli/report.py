"""`ttm-report`: compare the runs of an MLflow experiment (or of one sweep or Optuna study): a table and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ttm_experiments.cli.common import CONFIG_DIR, user_errors_exit
from ttm_experiments.cli.help_text import register_help_resolver
from ttm_experiments.config.schema import ReportConfig
from ttm_experiments.errors import ConfigError

# the report's plotting and MLflow code is imported when a report is built: `ttm-report --help` answers at once
register_help_resolver(CONFIG_DIR)  # `--help` lists this command's own config groups (cli/help_text.py)


def report(cfg: DictConfig) -> dict[str, Any]:
    """`ttm-report` on a composed `conf/report.yaml`: the report, and the MLflow run it was logged as."""
    from ttm_experiments.report.build import build_report, log_report, slug

    conf: ReportConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    r = conf.report
    if r.max_runs < 1 or r.top < 0:
        raise ConfigError(f"report.max_runs={r.max_runs} must be >= 1 and report.top={r.top} >= 0")
    experiment = r.experiment or conf.experiment_name
    default = Path(conf.paths.runs_dir) / "reports" / slug(experiment)
    out = Path(r.out_dir) if r.out_dir else default / slug(r.sweep) if r.sweep else default
    if r.zoo:  # the model zoo: label-efficiency curves and paired tables (report/zoo.py)
        from ttm_experiments.report.zoo import build_zoo

        result = build_zoo(
            uri=conf.tracking.uri, experiment=experiment, sweep=r.sweep, out_dir=out, max_runs=r.max_runs
        )
        if r.log_to_mlflow:
            result["run_id"] = log_report(conf.tracking.uri, experiment, r.sweep, result)
        return result
    result = build_report(
        uri=conf.tracking.uri,
        experiment=experiment,
        sweep=r.sweep,
        out_dir=out,
        max_runs=r.max_runs,
        top=r.top,
        compare=r.compare,
        baseline=r.baseline,
    )
    if r.log_to_mlflow:
        result["run_id"] = log_report(conf.tracking.uri, experiment, r.sweep, result)
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="report")
@user_errors_exit
def main(cfg: DictConfig) -> None:
    result = report(cfg)
    rows = result["rows"]
    print(result["table"].split("\n", 2)[0])
    print("\n".join(result["table"].split("\n")[1:12]))
    if len(rows) > 10:
        print(f"... {len(rows) - 10} more runs in the report")
    print(f"\nreport of {len(rows)} runs: {result['files'][0]}")
    for path in result["files"][1:]:
        print(f"  {path}")
    if result.get("run_id"):
        print(f"logged to MLflow as run {result['run_id']}")


if __name__ == "__main__":
    main()
