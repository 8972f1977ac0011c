"""The report's table: one row per run, ranked by the objective, as a DataFrame, for the console and as Markdown."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from ttm_experiments.metrics.classification import MIN_SUBJECTS_FOR_INTERVAL
from ttm_experiments.report.runs import Row, sci, shown_value, varied_params


def _short(text: str) -> str:
    """A param value for the table: floats to 4 significant digits."""
    if re.fullmatch(r"-?\d+\.\d{5,}(e-?\d+)?", text or ""):
        return f"{float(text):.4g}"
    return text


def format_number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def records(rows: list[Row], classes: list[str]) -> pd.DataFrame:
    """One unrounded record per run, best first: the content of runs.csv."""
    varied = varied_params(rows)

    def record(rank: int, r: Row) -> dict[str, Any]:
        m = r.metrics
        return {
            "rank": rank,
            "run_id": r.run_id,
            "run": r.name,
            "state": r.state,
            "strategy": r.strategy,
            "last_n": r.last_n,
            "lr": r.lr,
            "objective": r.objective,
            "metric": r.metric,
            "best_epoch": m.get("best/epoch"),
            "best_stage": r.tags.get("best.stage"),
            "test_auroc": m.get("test/auroc"),
            "test_auroc_ci_low": m.get("test/auroc_ci_low"),
            "test_auroc_ci_high": m.get("test/auroc_ci_high"),
            "test_subjects": m.get("test/n_subjects"),
            **{f"test_acc_{c}": m.get(f"test/acc/{c}") for c in classes},
            "test_balanced_acc": m.get("test/balanced_acc"),
            "mode_collapse": r.collapse,
            "collapsed_val_epochs": r.collapsed_epochs,
            "optuna_study": r.tags.get("optuna.study"),
            "optuna_trial": r.tags.get("optuna.trial"),
            "sweep": r.tags.get("sweep"),
            **{k: r.params.get(k) for k in varied},
        }

    return pd.DataFrame([record(rank, r) for rank, r in enumerate(rows, 1)])


def _interval_text(low: float, high: float, subjects: float | None) -> str:
    if pd.isna(low) or pd.isna(high):
        return ""
    few = subjects is not None and not pd.isna(subjects) and subjects < MIN_SUBJECTS_FOR_INTERVAL
    return f" [{low:.3f}, {high:.3f}]" + (f" (only {int(subjects)} test subjects: weak)" if few else "")


def display_table(rows: list[Row], table: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """The records formatted for report.md, under the headers a reader sees."""

    def num(column: str) -> pd.Series:
        return table[column].map(format_number)

    interval = [
        _interval_text(lo, hi, n)
        for lo, hi, n in zip(table["test_auroc_ci_low"], table["test_auroc_ci_high"], table["test_subjects"])
    ]
    shown = pd.DataFrame(
        {
            "#": table["rank"].astype(str),
            "run": table["run"],
            "state": table["state"],
            "strategy": table["strategy"],
            "last_n": table["last_n"],
            "lr": table["lr"].map(sci),
            f"{rows[0].metric} (objective)": num("objective"),
            "best epoch": [r.best_text for r in rows],
            "test AUROC [95% CI]": num("test_auroc") + interval,
            **{f"test acc {c}": num(f"test_acc_{c}") for c in classes},
            "test bal. acc": num("test_balanced_acc"),
            "collapse (selected)": table["mode_collapse"].map({True: "**yes**", False: "no"}),
            "collapsed val epochs": [("-" if r.collapsed_epochs is None else str(r.collapsed_epochs)) for r in rows],
        }
    )
    varied = varied_params(rows)
    if varied:
        shown["other params that vary"] = [
            " ".join(f"{k}={_short(shown_value(k, r.params.get(k, '-')))}" for k in varied) for r in rows
        ]
    return shown


def markdown_table(shown: pd.DataFrame) -> str:
    # DataFrame.to_markdown needs the optional `tabulate`; a pipe table is three lines
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join(
        [
            line(shown.columns),
            "|" + "|".join("---" for _ in shown.columns) + "|",
            *(line(row) for row in shown.itertuples(index=False)),
        ]
    )
