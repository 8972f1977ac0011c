"""`ttm-report`: compare the runs of an MLflow experiment (or of one sweep or Optuna study): a table and plots.

    ttm-report report.sweep=unfreeze_lr-ttm_1024-synthetic  # one Optuna study (or a sweep folder, or part of it)
    ttm-report experiment_name=grid report.out_dir=/tmp/r   # another experiment, another folder

Its config is `conf/report.yaml` (tracking, paths, experiment_name, report.*). Everything comes from MLflow;
writes `report.md` (table ranked by the objective, then the plots), `runs.csv` (the table unrounded),
`auroc_heatmap.png`, `per_class_accuracy.png` and `epochs.png` to `runs/reports/<experiment>[/<sweep>]/`,
and logs them as a run of the experiment (tag `ttm.kind=report`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ttm_experiments import report_compare, report_nested
from ttm_experiments.cli import CONFIG_DIR, user_errors_exit
from ttm_experiments.config.schema import ReportConfig
from ttm_experiments.errors import ConfigError, TrackingError

# params that never describe what was trained (or are shown in their own column)
# (schedule.stages follows schedule.name, backbone.kind and block_pattern follow backbone.name: showing the
# long JSON / regex as well buries the value that differs)
_NOT_VARIED = ("paths.", "search.", "tracking.", "report.", "inspect.", "run_name", "experiment_name",
               "optimized_metric", "unfreeze.strategy", "unfreeze.last_n", "optim.lr", "trainer.progress",
               "schedule.stages", "backbone.kind", "backbone.block_pattern")
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
    stages: list[tuple[str, int, int]] = field(default_factory=list)  # (name, first epoch, last epoch)

    @property
    def strategy(self) -> str:
        return self.tags.get("unfreeze.strategy") or self.params.get("unfreeze.strategy", "?")

    @property
    def last_n(self) -> str:
        return self.params.get("unfreeze.last_n") or self.tags.get("unfreeze.last_n", "?")

    @property
    def lr(self) -> float | None:
        return _float(self.params.get("optim.lr"))

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
        return f"{self.short_name} (last_n={self.last_n}, lr={_sci(self.lr)})"

    @property
    def best_text(self) -> str:
        """The table's best-epoch cell: epoch and stage, or where a pruned run stopped."""
        if self.state == "pruned":
            last = max((step for step, _ in self.history.get(self.metric, [])), default=None)
            return "pruned" if last is None else f"pruned at {last}"
        best = self.metrics.get("best/epoch")
        return "-" if best is None else f"{int(best)} ({self.tags.get('best.stage', '?')})"


# -- reading MLflow -----------------------------------------------------------------------------------------------
def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _sci(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.1e}"


def _quoted(text: str) -> str:
    return f'"{text}"' if "'" in text else f"'{text}'"


def connect(uri: str, experiment: str):
    """The client and experiment id; a missing experiment lists the ones that exist."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from ttm_experiments.tracking import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise TrackingError(f"tracking.uri={uri}: {db} does not exist; nothing has been tracked there yet. "
                            "Run ttm-train first, or point tracking.uri / paths.runs_dir at the store.")
    mlflow.set_tracking_uri(uri)  # mlflow.search_runs reads the global URI
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        names = [e.name for e in client.search_experiments()] if found is None else []
    except Exception as err:  # any store failure: re-raised as the user's error, with the URI
        raise TrackingError(f"tracking.uri={uri} cannot be read: {str(err).strip()[:300]}") from None
    if found is None:
        raise ConfigError(f"report.experiment={experiment!r}: no such MLflow experiment in {uri}; "
                          f"experiments there: {sorted(names)}")
    return client, found.experiment_id


def search(experiment_id: str, sweep: str | None, max_runs: int) -> list:
    """Train runs (not stage, study or report runs) of the experiment, or of one sweep / Optuna study, newest first."""
    import mlflow

    queries = ["tags.schedule LIKE '%'"]
    if sweep:
        queries = [f"tags.`optuna.study` = {_quoted(sweep)}", f"tags.sweep LIKE {_quoted('%' + sweep + '%')}"]
    # Run objects, not the DataFrame: their metrics keep the logging order, which gives the class order
    found = {run.info.run_id: run for q in queries
             for run in mlflow.search_runs([experiment_id], q, max_results=max_runs, output_format="list",
                                           order_by=["attributes.start_time DESC"])}
    train = [run for run in found.values() if "stage" not in run.data.tags and "schedule" in run.data.tags
             and run.data.tags.get("ttm.kind") not in ("study", "report")]
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
    return Row(run_id=run.info.run_id, name=tags.get("mlflow.runName", run.info.run_id[:8]), state=state,
               params=params, tags=tags, metrics=metrics, metric=params.get("optimized_metric", "val/auroc"))


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
    return row.params.get("search.direction", "maximize") != "minimize"


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
    return [k for k in keys if not (k.startswith(_NOT_VARIED) or k in _NOT_VARIED)
            and len({r.params.get(k) for r in rows}) > 1]


def _short(text: str) -> str:
    """A param value for the table: floats to 4 significant digits."""
    if re.fullmatch(r"-?\d+\.\d{5,}(e-?\d+)?", text or ""):
        return f"{float(text):.4g}"
    return text


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def records(rows: list[Row], classes: list[str]) -> pd.DataFrame:
    """One unrounded record per run, best first: the content of runs.csv."""
    varied = varied_params(rows)

    def record(rank: int, r: Row) -> dict[str, Any]:
        m = r.metrics
        return {"rank": rank, "run_id": r.run_id, "run": r.name, "state": r.state, "strategy": r.strategy,
                "last_n": r.last_n, "lr": r.lr, "objective": r.objective, "metric": r.metric,
                "best_epoch": m.get("best/epoch"), "best_stage": r.tags.get("best.stage"),
                "test_auroc": m.get("test/auroc"), "test_auroc_ci_low": m.get("test/auroc_ci_low"),
                "test_auroc_ci_high": m.get("test/auroc_ci_high"),
                **{f"test_acc_{c}": m.get(f"test/acc/{c}") for c in classes},
                "test_balanced_acc": m.get("test/balanced_acc"), "mode_collapse": r.collapse,
                "collapsed_val_epochs": r.collapsed_epochs,
                "optuna_study": r.tags.get("optuna.study"), "optuna_trial": r.tags.get("optuna.trial"),
                "sweep": r.tags.get("sweep"), **{k: r.params.get(k) for k in varied}}

    return pd.DataFrame([record(rank, r) for rank, r in enumerate(rows, 1)])


def display_table(rows: list[Row], table: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """The records formatted for report.md, under the headers a reader sees."""
    def num(column: str) -> pd.Series:
        return table[column].map(_num)

    interval = [f" [{lo:.3f}, {hi:.3f}]" if not (pd.isna(lo) or pd.isna(hi)) else ""
                for lo, hi in zip(table["test_auroc_ci_low"], table["test_auroc_ci_high"])]
    shown = pd.DataFrame({
        "#": table["rank"].astype(str), "run": table["run"], "state": table["state"], "strategy": table["strategy"],
        "last_n": table["last_n"], "lr": table["lr"].map(_sci), f"{rows[0].metric} (objective)": num("objective"),
        "best epoch": [r.best_text for r in rows], "test AUROC [95% CI]": num("test_auroc") + interval,
        **{f"test acc {c}": num(f"test_acc_{c}") for c in classes}, "test bal. acc": num("test_balanced_acc"),
        "collapse (selected)": table["mode_collapse"].map({True: "**yes**", False: "no"}),
        "collapsed val epochs": [("-" if r.collapsed_epochs is None else str(r.collapsed_epochs)) for r in rows]})
    varied = varied_params(rows)
    if varied:
        shown["other params that vary"] = [" ".join(f"{k}={_short(r.params.get(k, '-'))}" for k in varied)
                                           for r in rows]
    return shown


def markdown_table(shown: pd.DataFrame) -> str:
    # DataFrame.to_markdown needs the optional `tabulate`; a pipe table is three lines
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(shown.columns), "|" + "|".join("---" for _ in shown.columns) + "|",
                      *(line(row) for row in shown.itertuples(index=False))])


# -- the plots ------------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lr_axis(rows: list[Row]) -> tuple[list[str], Any, bool]:
    """Learning-rate columns: each value when there are few, log-spaced bins when a search sampled many."""
    import numpy as np

    values = sorted({r.lr for r in rows if r.lr is not None})
    labels = sorted({_sci(v) for v in values}, key=float)  # values that print alike share a column
    if len(labels) <= 8:
        return labels, lambda lr: labels.index(_sci(lr)) if lr is not None else None, False
    edges = np.geomspace(values[0], values[-1] * (1 + 1e-9), 7)
    labels = [f"{_sci(a)}\nto {_sci(b)}" for a, b in zip(edges[:-1], edges[1:])]
    return labels, lambda lr: int(min(np.searchsorted(edges, lr, side="right") - 1, len(labels) - 1)), True


def _cell_means(done: list[Row], ys: list[tuple[str, str]], x_of, n_x: int, value_of):
    """Mean of `value_of(run)` per (strategy, last_n) x learning-rate cell (NaN where no run), and the counts."""
    import numpy as np

    sums = np.zeros((len(ys), n_x))
    counts = np.zeros_like(sums)
    for r in done:
        value, x = value_of(r), x_of(r.lr)
        if value is not None and x is not None:
            y = ys.index((r.strategy, r.last_n))
            sums[y, x] += value
            counts[y, x] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / np.where(counts == 0, np.nan, counts), counts


def _heatmap_panel(fig, ax, grid, counts, cmap) -> None:
    """One panel: the cells coloured on the panel's own scale, each cell's mean (and n) written in it."""
    import numpy as np

    finite = grid[np.isfinite(grid)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.5, 1.0)
    if vmax - vmin < 0.02:  # a flat panel would divide by ~0 in the text colour below
        vmin, vmax = vmin - 0.01, vmax + 0.01
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for (y, x), value in np.ndenumerate(grid):
        if np.isfinite(value):
            bright = (value - vmin) / (vmax - vmin) > 0.6
            text = f"{value:.3f}" + (f"\nn={int(counts[y, x])}" if counts[y, x] > 1 else "")
            ax.text(x, y, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
        else:
            ax.text(x, y, "no run", ha="center", va="center", fontsize=7, color="#888888")
    fig.colorbar(im, ax=ax, label="AUROC", shrink=0.9, pad=0.02)


def heatmap_figure(rows: list[Row]):
    """Mean AUROC per (strategy, last_n) x learning rate: the validation objective next to the test AUROC."""
    plt = _plt()
    done = [r for r in rows if r.state == "finished" and r.lr is not None]
    if not done:
        return None
    strategies = sorted({r.strategy for r in done})
    ys = sorted({(r.strategy, r.last_n) for r in done}, key=lambda k: (k[0], _float(k[1]) or 0))
    x_labels, x_of, binned = _lr_axis(done)
    panels = [("validation " + done[0].metric + " at the best epoch (the objective)", lambda r: r.objective),
              ("test AUROC of the best checkpoint", lambda r: r.metrics.get("test/auroc"))]
    width = max(3.2, 1.15 * len(x_labels) + 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width + 3.4, 0.6 * len(ys) + 2.4), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#eeeeee")
    for ax, (title, value_of) in zip(axes[0], panels):
        _heatmap_panel(fig, ax, *_cell_means(done, ys, x_of, len(x_labels), value_of), cmap)
        ax.set_xticks(range(len(x_labels)), x_labels, fontsize=8)
        ax.set_xlabel("optim.lr" + (" (log-spaced bins of the sampled values)" if binned else ""))
        ax.set_title(title, fontsize=10)
    axes[0][0].set_yticks(range(len(ys)), [f"{s}, last_n={n}" if len(strategies) > 1 else f"last_n={n}" for s, n in ys])
    axes[0][0].set_ylabel("blocks unfrozen in the partial stage")
    fig.suptitle(f"AUROC over unfreeze.last_n x learning rate: mean of the {len(done)} finished runs per cell "
                 "(each panel has its own colour scale)", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def per_class_figure(rows: list[Row], classes: list[str], *, threshold: float = 0.05, limit: int = 24):
    """Test accuracy of each class per run (best first), balanced accuracy as a mark, collapse flagged."""
    import numpy as np

    plt = _plt()
    done = [r for r in rows if r.state == "finished" and any(f"test/acc/{c}" in r.metrics for c in classes)][:limit]
    if not done:
        return None
    x = np.arange(len(done))
    width = 0.8 / max(1, len(classes))
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(done) + 3.0), 4.8))
    colors = plt.get_cmap("tab10")
    for i, c in enumerate(classes):
        values = [r.metrics.get(f"test/acc/{c}", np.nan) for r in done]
        xs = x - 0.4 + width * (i + 0.5)
        ax.bar(xs, values, width, label=f"accuracy of class {c}", color=colors(i))
        for xi, v in zip(xs, values):
            if np.isfinite(v):
                ax.text(xi, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7, rotation=90 if len(done) > 10
                        else 0)
    bal = [r.metrics.get("test/balanced_acc", np.nan) for r in done]
    ax.scatter(x, bal, marker="_", s=900 * width, color="black", zorder=3, linewidths=2, label="balanced accuracy")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"collapse threshold ({threshold:g})")
    for xi, r in zip(x, done):
        if r.collapse:
            ax.text(xi, 1.1, "COLLAPSE", color="tab:red", ha="center", fontsize=7, fontweight="bold")
    ax.set_xticks(x, [f"#{rows.index(r) + 1} {r.short_name}\nlast_n={r.last_n}\nlr={_sci(r.lr)}" for r in done],
                  fontsize=8, rotation=0 if len(done) <= 8 else 90)
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Per-class test accuracy of the best checkpoint, runs ranked by {done[0].metric}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _stage_starts(row: Row) -> list[int]:
    return [first for _, first, _ in row.stages]


def _shade_stages(axes, reference: Row) -> None:
    """The reference run's stages as alternating bands, named above the top panel."""
    for ax in axes:
        for i, (_, first, last) in enumerate(reference.stages):
            ax.axvspan(first - 0.5, last + 0.5, color="#e3ecf7" if i % 2 == 0 else "#f4f4f4", zorder=0)
    for name, first, last in reference.stages:
        axes[0].text((first + last) / 2, 1.01, name, transform=axes[0].get_xaxis_transform(), ha="center",
                     va="bottom", fontsize=9, color="#333333")


def _plot_run(axes, keys: list[str], row: Row, *, color, label: str, own_stages: bool) -> None:
    """One run's curves: pruned runs end in a cross, the best epoch is starred."""
    best = row.metrics.get("best/epoch")
    for ax, key in zip(axes, keys):
        points = row.history.get(key, [])
        if not points:
            continue
        steps, values = zip(*points)
        ax.plot(steps, values, color=color, lw=1.6, marker="o", ms=3, label=label)
        if row.state == "pruned":
            ax.plot(steps[-1], values[-1], marker="x", ms=10, color=color, mew=2.2, zorder=4)
        if best is not None and int(best) in steps:
            ax.plot(int(best), values[steps.index(int(best))], marker="*", ms=13, color=color, mec="black",
                    mew=0.6, zorder=5)
        if own_stages:  # this run's schedule differs from the shaded one: its stage starts, in its colour
            for first in _stage_starts(row)[1:]:
                ax.axvline(first - 0.5, color=color, lw=1.0, ls="--", alpha=0.7, zorder=1)


def _label_epoch_axes(axes, classes: list[str], threshold: float) -> None:
    from matplotlib.ticker import MaxNLocator

    axes[0].set_ylabel("val AUROC")
    for ax, c in zip(axes[1:], classes):
        ax.set_ylabel(f"val accuracy of\nclass {c}")
        ax.axhline(threshold, color="tab:red", ls="--", lw=0.8)
        ax.set_ylim(-0.04, 1.04)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("epoch (counted across stages)")


def epochs_figure(rows: list[Row], classes: list[str], *, threshold: float = 0.05,
                  ranks: dict[str, int] | None = None):
    """Validation AUROC and per-class accuracy over epochs for the drawn runs; stages shaded, best epoch starred."""
    plt = _plt()
    ranks = ranks or {r.run_id: i + 1 for i, r in enumerate(rows)}
    drawn = [r for r in rows if r.history.get("val/auroc")]
    if not drawn:
        return None
    keys = ["val/auroc", *[f"val/acc/{c}" for c in classes]]
    fig, axes = plt.subplots(len(keys), 1, figsize=(10.5, 2.2 * len(keys) + 0.9), sharex=True, squeeze=False)
    axes = axes[:, 0]
    reference = next((r for r in drawn if r.stages), None)
    if reference is not None:
        _shade_stages(axes, reference)
    other_stages = False
    for i, r in enumerate(drawn):
        # a pruned run has a prefix of the stages: only another schedule counts as different
        differs = bool(reference is not None and r.stages
                       and _stage_starts(r) != _stage_starts(reference)[:len(r.stages)])
        other_stages |= differs
        label = f"#{ranks[r.run_id]} {r.label}" + (" - pruned" if r.state == "pruned" else "")
        _plot_run(axes, keys, r, color=plt.get_cmap("tab10")(i % 10), label=label, own_stages=differs)
    _label_epoch_axes(axes, classes, threshold)
    notes = [f"shading: stages of run #{ranks[reference.run_id]}" if reference is not None else "",
             "dashed: stage starts of runs with another schedule" if other_stages else "",
             "* best epoch (tested checkpoint)", "x pruned", f"red line: collapse threshold {threshold:g}"]
    fig.suptitle("Validation AUROC and per-class accuracy per epoch", fontsize=11)
    axes[0].set_title("; ".join(n for n in notes if n), fontsize=8, pad=16, color="#444444")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.026 * math.ceil(len(labels) / 2) + 0.012, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    plt.close(fig)
    return fig


# -- the report -----------------------------------------------------------------------------------------------------
CAPTIONS = {"auroc_heatmap.png": "AUROC over unfreeze.last_n x learning rate (mean over runs per cell)",
            "per_class_accuracy.png": "Per-class test accuracy per run",
            "epochs.png": "Validation AUROC and per-class accuracy over epochs (top {drawn} runs)",
            "paired_forest.png": "Paired comparisons: test AUROC differences per fold and across folds"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "sweep"


def _collapse_threshold(rows: list[Row]) -> float:
    """The threshold the runs flagged collapse with (their `trainer.collapse_threshold`; 0.05 by default)."""
    value = _float(rows[0].params.get("trainer.collapse_threshold"))
    return 0.05 if value is None else value


def _save_figures(out_dir: Path, rows: list[Row], drawn: list[Row], classes: list[str], threshold: float) -> list[str]:
    """The plots that have something to show, saved in `out_dir`; returns their file names."""
    ranks = {r.run_id: i + 1 for i, r in enumerate(rows)}
    figures = {"auroc_heatmap.png": heatmap_figure(rows),
               "per_class_accuracy.png": per_class_figure(rows, classes, threshold=threshold),
               "epochs.png": epochs_figure(drawn, classes, threshold=threshold, ranks=ranks)}
    for name, fig in figures.items():
        if fig is not None:
            fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
    return [name for name, fig in figures.items() if fig is not None]


def _markdown(*, uri: str, experiment: str, sweep: str | None, rows: list[Row], table: str, figures: list[str],
              drawn: int, threshold: float) -> str:
    counts = {s: sum(r.state == s for r in rows) for s in STATE_ORDER}
    best = rows[0]
    title = f"ttm-report: experiment `{experiment}`" + (f", sweep/study `{sweep}`" if sweep else "")
    lines = [f"# {title}", "",
             f"{len(rows)} runs from `{uri}`: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
             f"Ranked by `{best.metric}` at the best epoch (finished runs first; a pruned run shows the best value "
             "it reached before it stopped). Test metrics are of the best checkpoint; the AUROC interval is a "
             "subject-wise bootstrap 95% CI. `collapse (selected)`: at the selected checkpoint a class fell below "
             f"{threshold:g} accuracy on validation or test; `collapsed val epochs`: how many epochs of the run "
             "collapsed on validation.", ""]
    if best.state == "finished":
        lines += [f"Best: **{best.name}** (`{best.run_id}`), {best.metric} = {_num(best.objective)}, "
                  f"test AUROC {_num(best.metrics.get('test/auroc'))}, unfreeze {best.strategy} "
                  f"last_n={best.last_n}, lr={_sci(best.lr)}.", ""]
    lines += [table, ""]
    for name in figures:
        caption = CAPTIONS[name].format(drawn=drawn)
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines)


def build_report(*, uri: str, experiment: str, sweep: str | None, out_dir: Path, max_runs: int = 500,
                 top: int = 8, compare: str | None = None, baseline: str | None = None) -> dict[str, Any]:
    """Read the runs, write table and plots to `out_dir`; returns the rows, the Markdown table and the files."""
    client, experiment_id = connect(uri, experiment)
    rows, classes = collect(client, experiment_id, sweep, max_runs)
    if not rows:
        where = f"sweep/study {sweep!r} of " if sweep else ""
        raise ConfigError(f"no ttm-train runs in {where}experiment {experiment!r} ({uri}); "
                          "report.sweep filters on the sweep folder or the Optuna study name")
    settings = report_compare.resolve(rows, compare, baseline)  # a wrong report.compare fails before any file
    drawn = [r for r in rows if r.state in ("finished", "pruned")][:top]
    for row in drawn:
        load_details(client, experiment_id, row, classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = records(rows, classes)
    table.to_csv(out_dir / "runs.csv", index=False, lineterminator="\r\n")  # as the csv module writes it
    threshold = _collapse_threshold(rows)
    figures = _save_figures(out_dir, rows, drawn, classes, threshold)
    markdown = markdown_table(display_table(rows, table, classes))
    extra, comps = _extra_sections(client, rows, settings, out_dir)
    figures += ["paired_forest.png"] if (out_dir / "paired_forest.png").exists() and comps else []
    (out_dir / "report.md").write_text(_markdown(uri=uri, experiment=experiment, sweep=sweep, rows=rows,
                                                 table=markdown, figures=figures, drawn=len(drawn),
                                                 threshold=threshold) + "\n".join(extra))
    files = [out_dir / "report.md", out_dir / "runs.csv", *(out_dir / name for name in figures)]
    return {"rows": rows, "classes": classes, "files": files, "table": markdown, "comparisons": comps,
            "counts": {s: sum(r.state == s for r in rows) for s in STATE_ORDER}}


def _extra_sections(client, rows: list[Row], settings: list[tuple[str, str | None]], out_dir: Path):
    """The paired comparisons (and their forest plot) and the seed spread, as Markdown lines."""
    comps = [c for setting, base in settings for c in report_compare.comparisons(rows, setting, base)]
    for comp in comps:
        report_compare.score(client, comp)
    (out_dir / "paired_forest.png").unlink(missing_ok=True)
    fig = report_compare.forest_figure(comps)
    if fig is not None:
        fig.savefig(out_dir / "paired_forest.png", dpi=110, bbox_inches="tight")
    notes = [f"compared: {', '.join(s for s, _ in settings) or 'nothing varies'}"]
    lines = report_nested.nested_markdown(rows) + report_compare.comparison_markdown(comps, notes)
    return lines + report_compare.seed_markdown(report_compare.seed_spread(rows)), comps


def log_report(uri: str, experiment: str, sweep: str | None, result: dict[str, Any]) -> str:
    """The report as a run of the experiment: its files as artifacts, the table as the run's description."""
    from ttm_experiments.tracking import MlflowTracker

    tracker = MlflowTracker(uri, experiment)
    tags = {"ttm.kind": "report", "report.runs": str(len(result["rows"])),
            "mlflow.note.content": result["table"][:60000]}
    if sweep:
        tags["report.sweep"] = sweep
    tracker.start_run(f"report {sweep}" if sweep else "report", tags)
    for path in result["files"]:
        tracker.client.log_artifact(tracker.run_id, str(path), "report")
    tracker.end_run("FINISHED")
    return str(tracker.run_id)


def report(cfg: DictConfig) -> dict[str, Any]:
    """`ttm-report` on a composed `conf/report.yaml`: the report, and the MLflow run it was logged as."""
    conf: ReportConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    r = conf.report
    if r.max_runs < 1 or r.top < 0:
        raise ConfigError(f"report.max_runs={r.max_runs} must be >= 1 and report.top={r.top} >= 0")
    experiment = r.experiment or conf.experiment_name
    default = Path(conf.paths.runs_dir) / "reports" / _slug(experiment)
    out = Path(r.out_dir) if r.out_dir else default / _slug(r.sweep) if r.sweep else default
    result = build_report(uri=conf.tracking.uri, experiment=experiment, sweep=r.sweep, out_dir=out,
                          max_runs=r.max_runs, top=r.top, compare=r.compare, baseline=r.baseline)
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
