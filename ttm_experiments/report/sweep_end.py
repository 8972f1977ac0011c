"""The end of a `ttm-train -m` multirun: its jobs side by side, best first, and the `ttm-report` command for them.

A Hydra callback (`hydra.callbacks.sweep_summary` in conf/train.yaml). Each job printed its own summary as it
ended; this table is what a researcher compares: the setting each job ran (its overrides), the selection metric at
the best epoch, the test AUROC with its subject-wise interval, per-class accuracy and collapse. It reads the jobs
back from MLflow (the `sweep` tag: the multirun's folder), so it shows what was recorded, not what was intended.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ttm_experiments.report.table import format_number

log = logging.getLogger(__name__)

MAX_ROWS = 40  # a longer sweep prints its best 40; ttm-report has them all


def sweep_rows(uri: str, experiment: str, sweep: str) -> tuple[list, list[str]]:
    """The sweep's train runs as report rows, best first (see `report/runs.collect`)."""
    from ttm_experiments.report.runs import collect, connect

    client, experiment_id = connect(uri, experiment)
    rows, classes = collect(client, experiment_id, sweep, max_runs=5000)
    return [r for r in rows if r.tags.get("sweep") == sweep], classes


def without_inner_folds(rows: list) -> tuple[list, list]:
    """The jobs to show, and an inner-CV study's fold jobs apart: their "test" split is an inner validation fold
    (docs/sweeps-and-search.md), so their test numbers must not stand beside real ones."""
    return [r for r in rows if "optuna.inner_fold" not in r.tags], [r for r in rows if "optuna.inner_fold" in r.tags]


def split_overrides(rows: list) -> tuple[list[str], list[str]]:
    """The overrides every job shares, and per job the ones that set it apart."""
    per_job = [r.tags.get("overrides", "").split() for r in rows]
    shared = [o for o in per_job[0] if all(o in job for job in per_job)] if per_job else []
    return shared, [" ".join(o for o in job if o not in shared) or "(the shared ones only)" for job in per_job]


def sweep_table(rows: list, classes: list[str]) -> pd.DataFrame:
    """One line per job: its own overrides, state, objective, test AUROC [interval], per-class accuracy, collapse."""
    return pd.DataFrame(
        {
            "job": [str(r.tags.get("sweep.job", "?")) for r in rows],
            "setting": split_overrides(rows)[1],
            "state": [r.state for r in rows],
            rows[0].metric if rows else "objective": [format_number(r.objective) for r in rows],
            "test AUROC": [
                format_number(r.metrics.get("test/auroc"))
                + (
                    f" [{r.metrics['test/auroc_ci_low']:.3f}, {r.metrics['test/auroc_ci_high']:.3f}]"
                    if "test/auroc_ci_low" in r.metrics
                    else ""
                )
                for r in rows
            ],
            **{f"acc {c}": [format_number(r.metrics.get(f"test/acc/{c}")) for r in rows] for c in classes},
            "collapse": ["yes" if r.collapse else "no" for r in rows],
        }
    )


def summary_text(uri: str, experiment: str, sweep: str) -> str:
    rows, classes = sweep_rows(uri, experiment, sweep)
    rows, inner = without_inner_folds(rows)
    left_out = (
        f"({len(inner)} inner-fold jobs left out: their test split is an inner validation fold)\n" if inner else ""
    )
    command = f"ttm-report report.experiment={experiment} report.sweep={sweep}"
    if not rows:
        return f"no finished job of this multirun reached MLflow ({uri}, experiment {experiment!r})"
    table = sweep_table(rows[:MAX_ROWS], classes).to_string(index=False)
    more = f"\n(best {MAX_ROWS} of {len(rows)} jobs)" if len(rows) > MAX_ROWS else ""
    shared = " ".join(split_overrides(rows)[0])
    return (
        f"\nMULTIRUN {sweep}: {len(rows)} jobs, best first by {rows[0].metric} (test: each job's best checkpoint)\n"
        + (f"all jobs: {shared}\n" if shared else "")
        + f"{table}{more}\n{left_out}plots, paired comparisons and report.md: {command}"
    )


class SweepSummary(Callback):
    """Prints `summary_text` when a multirun ends (a grid or an Optuna study)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        uri = OmegaConf.select(config, "tracking.uri", default=None)
        experiment = OmegaConf.select(config, "experiment_name", default=None)
        sweep = OmegaConf.select(config, "hydra.sweep.dir", default=None)
        if not (uri and experiment and sweep):
            return
        print(summary_text(str(uri), str(experiment), str(sweep)), flush=True)
