"""A whole report: the table and figures written to a folder, the extra sections (paired comparison, nested CV),
logged as an MLflow run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ttm_experiments.errors import ConfigError
from ttm_experiments.report import compare as report_compare
from ttm_experiments.report import nested as report_nested
from ttm_experiments.report.plots import epochs_figure, heatmap_figure, per_class_figure
from ttm_experiments.report.runs import (
    STATE_ORDER,
    Row,
    as_float,
    collect,
    connect,
    load_details,
    poolable,
    sci,
)
from ttm_experiments.report.table import display_table, format_number, markdown_table, records

CAPTIONS = {
    "auroc_heatmap.png": "AUROC over unfreeze.last_n x learning rate (mean per cell over runs that differ only in "
    "these axes, the seed and the fold{pooled})",
    "per_class_accuracy.png": "Per-class test accuracy per run",
    "epochs.png": "Validation AUROC and per-class accuracy over epochs (top {drawn} runs)",
    "paired_forest.png": "Paired comparisons: test AUROC differences per fold and across folds",
}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "sweep"


def _collapse_threshold(rows: list[Row]) -> float:
    """The threshold the runs flagged collapse with (their `trainer.collapse_threshold`; 0.05 by default)."""
    value = as_float(rows[0].params.get("trainer.collapse_threshold"))
    return 0.05 if value is None else value


def _save_figures(out_dir: Path, rows: list[Row], drawn: list[Row], classes: list[str], threshold: float) -> list[str]:
    """The plots that have something to show, saved in `out_dir`; returns their file names."""
    ranks = {r.run_id: i + 1 for i, r in enumerate(rows)}
    figures = {
        "auroc_heatmap.png": heatmap_figure(rows),
        "per_class_accuracy.png": per_class_figure(rows, classes, threshold=threshold),
        "epochs.png": epochs_figure(drawn, classes, threshold=threshold, ranks=ranks),
    }
    for name, fig in figures.items():
        if fig is not None:
            fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
    return [name for name, fig in figures.items() if fig is not None]


def _markdown(
    *,
    uri: str,
    experiment: str,
    sweep: str | None,
    rows: list[Row],
    table: str,
    figures: list[str],
    drawn: int,
    threshold: float,
) -> str:
    counts = {s: sum(r.state == s for r in rows) for s in STATE_ORDER}
    best = rows[0]
    title = f"ttm-report: experiment `{experiment}`" + (f", sweep/study `{sweep}`" if sweep else "")
    lines = [
        f"# {title}",
        "",
        f"{len(rows)} runs from `{uri}`: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
        f"Ranked by `{best.metric}` at the best epoch (finished runs first; a pruned run shows the best value "
        "it reached before it stopped). Test metrics are of the best checkpoint; the AUROC interval is a "
        "subject-wise bootstrap 95% CI. `collapse (selected)`: at the selected checkpoint a class fell below "
        f"{threshold:g} accuracy on validation or test; `collapsed val epochs`: how many epochs of the run "
        "collapsed on validation.",
        "",
    ]
    if best.state == "finished":
        lines += [
            f"Best: **{best.name}** (`{best.run_id}`), {best.metric} = {format_number(best.objective)}, "
            f"test AUROC {format_number(best.metrics.get('test/auroc'))}, unfreeze {best.strategy} "
            f"last_n={best.last_n}, lr={sci(best.lr)}.",
            "",
        ]
    lines += [table, ""]
    kept, left_out = poolable([r for r in rows if r.state == "finished" and r.lr is not None])
    pooled = "; only runs with " + ", ".join(f"{k}={kept[0].params.get(k)}" for k in left_out) if left_out else ""
    for name in figures:
        caption = CAPTIONS[name].format(drawn=drawn, pooled=pooled)
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines)


def build_report(
    *,
    uri: str,
    experiment: str,
    sweep: str | None,
    out_dir: Path,
    max_runs: int = 500,
    top: int = 8,
    compare: str | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Read the runs, write table and plots to `out_dir`; returns the rows, the Markdown table and the files."""
    client, experiment_id = connect(uri, experiment)
    rows, classes = collect(client, experiment_id, sweep, max_runs)
    if not rows:
        where = f"sweep/study {sweep!r} of " if sweep else ""
        raise ConfigError(
            f"no ttm-train runs in {where}experiment {experiment!r} ({uri}); "
            "report.sweep filters on the sweep folder or the Optuna study name"
        )
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
    (out_dir / "report.md").write_text(
        _markdown(
            uri=uri,
            experiment=experiment,
            sweep=sweep,
            rows=rows,
            table=markdown,
            figures=figures,
            drawn=len(drawn),
            threshold=threshold,
        )
        + "\n".join(extra)
    )
    files = [out_dir / "report.md", out_dir / "runs.csv", *(out_dir / name for name in figures)]
    return {
        "rows": rows,
        "classes": classes,
        "files": files,
        "table": markdown,
        "comparisons": comps,
        "counts": {s: sum(r.state == s for r in rows) for s in STATE_ORDER},
    }


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


def reports_experiment(experiment: str) -> str:
    return f"{experiment}-reports"


def log_report(uri: str, experiment: str, sweep: str | None, result: dict[str, Any]) -> str:
    """The report as a run of the experiment `<experiment>-reports` (beside the training runs, not among them): its
    files as artifacts, the table as the run's description."""
    from ttm_experiments.tracking.mlflow_tracker import MlflowTracker

    tracker = MlflowTracker(uri, reports_experiment(experiment))
    tags = {
        "ttm.kind": "report",
        "report.runs": str(len(result["rows"])),
        "mlflow.note.content": result["table"][:60000],
    }
    if sweep:
        tags["report.sweep"] = sweep
    tracker.start_run(f"report {sweep}" if sweep else "report", tags)
    for path in result["files"]:
        tracker.client.log_artifact(tracker.run_id, str(path), "report")
    tracker.end_run("FINISHED")
    return str(tracker.run_id)
