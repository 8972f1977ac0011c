"""`ttm-report`: compare the runs of an MLflow experiment (or of one sweep or Optuna study): a table and plots.

    ttm-report report.sweep=unfreeze_lr-ttm_1024-synthetic  # one Optuna study (or a sweep folder, or part of it)
    ttm-report experiment_name=grid report.out_dir=/tmp/r   # another experiment, another folder

Its config is `conf/report.yaml` (tracking, paths, experiment_name, report.*). Everything comes from MLflow;
writes `report.md` (table ranked by the objective, then the plots), `runs.csv` (the table unrounded),
`auroc_heatmap.png`, `per_class_accuracy.png` and `epochs.png` to `runs/reports/<experiment>[/<sweep>]/`,
and logs them as a run of the experiment `<experiment>-reports` (tag `ttm.kind=report`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ttm_experiments.config.schema import parse_metric
from ttm_experiments.errors import ConfigError, TrackingError

# params that say nothing about what was trained: where it ran, how it was tracked, searched or reported
BOOKKEEPING = (
    "paths.",
    "tracking.",
    "search.",
    "report.",
    "inspect.",
    "run_name",
    "experiment_name",
    "resume",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.device",
)
# ... and params the table shows in their own column, or that follow another param (schedule.stages follows
# schedule.name, backbone.kind and block_pattern follow backbone.name: the long JSON / regex would bury the value
# that differs)
_NOT_VARIED = BOOKKEEPING + (
    "optimized_metric",
    "unfreeze.strategy",
    "unfreeze.last_n",
    "optim.lr",
    "schedule.stages",
    "backbone.kind",
    "backbone.block_pattern",
)


# values that stand for another setting's value: a report shows what they resolve to, not a bare 0
MEANINGS = {
    ("trainer.max_epochs_per_stage", "0"): "0 (no cap: the schedule's epochs)",
    ("trainer.max_batches", "0"): "0 (no cap: every batch)",
    ("trainer.num_threads", "0"): "0 (torch's default)",
}


def shown_value(key: str, value: str | None) -> str:
    """A param's value as a report shows it (with its meaning where it stands for another setting)."""
    return MEANINGS.get((key, str(value)), str(value))


def is_bookkeeping(key: str, prefixes: tuple[str, ...] = BOOKKEEPING) -> bool:
    return key.startswith(prefixes) or key in prefixes


STATE_ORDER = {"finished": 0, "pruned": 1, "running": 2, "failed": 3}


@dataclass
class Row:
    run_id: str
    name: str
    state: str  # finished | pruned | failed | running
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    metric: str  # the objective's name, e.g. val/auroc
    objective: float | None = None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    start_time: int = 0  # ms since the epoch (MLflow's): which of two runs of one setting is the newer
    stages: list[tuple[str, int, int]] = field(default_factory=list)  # (name, first epoch, last epoch)

    @property
    def strategy(self) -> str:
        return self.tags.get("unfreeze.strategy") or self.params.get("unfreeze.strategy", "?")

    @property
    def last_n(self) -> str:
        return self.params.get("unfreeze.last_n") or self.tags.get("unfreeze.last_n", "?")

    @property
    def lr(self) -> float | None:
        return as_float(self.params.get("optim.lr"))

    @property
    def collapse(self) -> bool:
        """The selected checkpoint collapsed (tag `mode_collapse`: its validation epoch or its test result)."""
        return self.tags.get("mode_collapse") == "true"

    @property
    def collapsed_epochs(self) -> int | None:
        """How many validation epochs collapsed (metric `val/collapsed_epochs`, else the tag's epoch list)."""
        if "val/collapsed_epochs" in self.metrics:
            return int(self.metrics["val/collapsed_epochs"])
        epochs = self.tags.get("mode_collapse.val_epochs")
        return None if epochs is None else 0 if epochs == "none" else len(epochs.split(","))

    @property
    def short_name(self) -> str:
        trial = self.tags.get("optuna.trial")
        return f"trial {trial}" if trial is not None and "trial" not in self.name else self.name

    @property
    def label(self) -> str:
        return f"{self.short_name} (last_n={self.last_n}, lr={sci(self.lr)})"

    @property
    def best_text(self) -> str:
        """The table's best-epoch cell: epoch and stage, or where a pruned run stopped."""
        if self.state == "pruned":
            last = max((step for step, _ in self.history.get(self.metric, [])), default=None)
            return "pruned" if last is None else f"pruned at {last}"
        best = self.metrics.get("best/epoch")
        return "-" if best is None else f"{int(best)} ({self.tags.get('best.stage', '?')})"


# -- reading MLflow -----------------------------------------------------------------------------------------------
def as_float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def sci(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.1e}"


def _quoted(text: str) -> str:
    return f'"{text}"' if "'" in text else f"'{text}'"


def connect(uri: str, experiment: str):
    """The client and experiment id; a missing experiment lists the ones that exist."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from ttm_experiments.tracking.mlflow_tracker import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise TrackingError(
            f"tracking.uri={uri}: {db} does not exist; nothing has been tracked there yet. "
            "Run ttm-train first, or point tracking.uri / paths.runs_dir at the store."
        )
    mlflow.set_tracking_uri(uri)  # mlflow.search_runs reads the global URI
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        names = [e.name for e in client.search_experiments()] if found is None else []
    except Exception as err:  # any store failure: re-raised as the user's error, with the URI
        raise TrackingError(f"tracking.uri={uri} cannot be read: {str(err).strip()[:300]}") from None
    if found is None:
        raise ConfigError(
            f"report.experiment={experiment!r}: no such MLflow experiment in {uri}; experiments there: {sorted(names)}"
        )
    return client, found.experiment_id


def search(experiment_id: str, sweep: str | None, max_runs: int) -> list:
    """Train runs (not stage, study or report runs) of the experiment, or of one sweep / Optuna study, newest first."""
    import mlflow

    queries = ["tags.schedule LIKE '%'"]
    if sweep:
        queries = [f"tags.`optuna.study` = {_quoted(sweep)}", f"tags.sweep LIKE {_quoted('%' + sweep + '%')}"]
    # Run objects, not the DataFrame: their metrics keep the logging order, which gives the class order
    found = {
        run.info.run_id: run
        for q in queries
        for run in mlflow.search_runs(
            [experiment_id], q, max_results=max_runs, output_format="list", order_by=["attributes.start_time DESC"]
        )
    }
    train = [
        run
        for run in found.values()
        if "stage" not in run.data.tags
        and "schedule" in run.data.tags
        and run.data.tags.get("ttm.kind") not in ("study", "report")
    ]
    return train[:max_runs]


def to_row(run) -> Row:
    params, tags, metrics = dict(run.data.params), dict(run.data.tags), dict(run.data.metrics)
    status = run.info.status
    if status == "FINISHED":
        state = "finished"
    elif tags.get("optuna.state") == "PRUNED" or "pruned" in tags:
        state = "pruned"
    else:
        state = "running" if status == "RUNNING" else "failed"
    return Row(
        run_id=run.info.run_id,
        name=tags.get("mlflow.runName", run.info.run_id[:8]),
        state=state,
        params=params,
        tags=tags,
        metrics=metrics,
        metric=params.get("optimized_metric", "val/auroc"),
        start_time=int(run.info.start_time or 0),
    )


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def load_details(client, experiment_id: str, row: Row, classes: list[str]) -> None:
    """Per-epoch validation history (parent run, step = epoch across stages) and the stage boundaries."""
    keys = dict.fromkeys(["val/auroc", *[f"val/acc/{c}" for c in classes], row.metric])
    row.history.update({key: _history(client, row.run_id, key) for key in keys})
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{row.run_id}'", max_results=100)
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/auroc")]
        if not steps:  # an SSL stage logs other metrics
            steps = [m.step for key in child.data.metrics for m in client.get_metric_history(child.info.run_id, key)]
        if steps:
            row.stages.append((child.data.tags.get("stage", child.info.run_name), min(steps), max(steps)))
    row.stages.sort(key=lambda s: s[1])


def _uses_best_auroc(row: Row) -> bool:
    return row.metric == "val/auroc" and row.state == "finished" and "best/val_auroc" in row.metrics


def objective(row: Row, maximize: bool) -> float | None:
    """`optimized_metric` at the best epoch; for a pruned run, the best value it reached before it stopped."""
    if _uses_best_auroc(row):
        return row.metrics["best/val_auroc"]
    history = row.history.get(row.metric)
    if not history:
        return None
    if row.state == "finished" and "best/epoch" in row.metrics:
        at = dict(history).get(int(row.metrics["best/epoch"]))
        if at is not None:
            return at
    values = [v for _, v in history]
    return max(values) if maximize else min(values)


def classes_of(rows: list[Row]) -> list[str]:
    found = (re.fullmatch(r"(?:test|val)/acc/(.+)", key) for r in rows for key in r.metrics)
    return list(dict.fromkeys(m.group(1) for m in found if m))


def _maximize(row: Row) -> bool:
    """The direction of the run's selection metric, by the one rule that parses it (a `*loss` is minimised); a
    run without a per-epoch metric (a study's own run) ranks by its objective, maximised."""
    return "/" not in row.metric or parse_metric(row.metric).direction == "maximize"


def collect(client, experiment_id: str, sweep: str | None, max_runs: int) -> tuple[list[Row], list[str]]:
    """The runs as rows, best first (finished, then pruned, running, failed), and the class names they log."""
    rows = [to_row(run) for run in search(experiment_id, sweep, max_runs)]
    if len({r.tags.get("optuna.study") for r in rows}) > 1:  # trial-3 of which study
        for r in rows:
            if r.tags.get("optuna.study"):
                r.name = f"{r.tags['optuna.study']}/{r.name}"
    for row in rows:
        if not _uses_best_auroc(row):
            row.history[row.metric] = _history(client, row.run_id, row.metric)
        row.objective = objective(row, _maximize(row))
    sign = -1.0 if not rows or _maximize(rows[0]) else 1.0
    rows.sort(key=lambda r: (STATE_ORDER.get(r.state, 9), r.objective is None, sign * (r.objective or 0.0)))
    return rows, classes_of(rows)


# -- the table ------------------------------------------------------------------------------------------------------
def varied_params(rows: list[Row]) -> list[str]:
    keys = sorted({k for r in rows for k in r.params})
    return [k for k in keys if not is_bookkeeping(k, _NOT_VARIED) and len({r.params.get(k) for r in rows}) > 1]


# -- the plots ------------------------------------------------------------------------------------------------------


REPLICATES = ("seed", "dataset.fold")  # what a cell's runs may differ in besides its axes: repeats of one setting


def poolable(rows: list[Row]) -> tuple[list[Row], dict[str, list[str]]]:
    """The runs a plot may average per cell: those that agree on every varied param other than the plot's axes
    (`unfreeze.*`, `optim.lr`) and the replicates (seed, fold), namely the group of the first (best) run; and, for
    the runs left out, the values of the keys they differ in."""
    other = [k for k in varied_params(rows) if k not in REPLICATES]
    if len({r.params.get("optimized_metric") for r in rows}) > 1:  # a loss is not averaged with an AUROC
        other.append("optimized_metric")
    if not rows or not other:
        return rows, {}

    def signature(r: Row) -> tuple:
        return tuple(r.params.get(k) for k in other)

    kept = [r for r in rows if signature(r) == signature(rows[0])]
    left = [r for r in rows if signature(r) != signature(rows[0])]
    differing = {k: sorted({str(r.params.get(k)) for r in left}) for k in other}
    return kept, {k: v for k, v in differing.items() if v != [str(rows[0].params.get(k))]}
