"""What a finished (or resumed) study says: counts, the best trial, importances, and two small plots."""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from itertools import accumulate
from typing import Any

log = logging.getLogger(__name__)


def counts(trials) -> dict[str, int]:
    c = Counter(t.state.name for t in trials)
    return {
        "complete": c.get("COMPLETE", 0),
        "pruned": c.get("PRUNED", 0),
        "failed": c.get("FAIL", 0),
        "running": c.get("RUNNING", 0) + c.get("WAITING", 0),
    }


def best_value_so_far(trials, maximize: bool) -> float | None:
    values = [t.value for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    return (max if maximize else min)(values, default=None)


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) when at least two trials completed; {} when they cannot be had."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception as err:  # e.g. no parameter varies among the complete trials
        log.info("parameter importances not available: %s", err)
        return {}


def history_figure(trials, metric: str, maximize: bool):
    """Objective per trial: complete trials as dots, pruned ones as crosses at their last value, best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    failed = [t for t in trials if t.state.name == "FAIL"]
    if done:
        ax.scatter(
            [t.number for t in done],
            [t.value for t in done],
            color="tab:blue",
            zorder=3,
            label=f"complete ({len(done)})",
        )
        ordered = sorted(done, key=lambda t: t.number)
        best = list(accumulate((t.value for t in ordered), max if maximize else min))
        ax.step([t.number for t in ordered], best, where="post", color="tab:green", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter(
            [t.number for t in pruned],
            last,
            marker="x",
            color="tab:orange",
            zorder=3,
            label=f"pruned ({len(pruned)}), value when pruned",
        )
    for t in failed:
        ax.axvline(t.number, color="tab:red", alpha=0.25, lw=1)
    if failed:
        ax.plot([], [], color="tab:red", alpha=0.4, label=f"failed ({len(failed)})")
    ax.set_xlabel("trial number")
    ax.set_ylabel(metric)
    ax.set_title(f"Optuna study: {metric} per trial ({'higher' if maximize else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    plt.close(fig)
    return fig


def importance_figure(values: dict[str, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.2))
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(values[n], i, f" {values[n]:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(1.0, max(values.values()) * 1.15))
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title("Optuna parameter importances (complete trials)")
    fig.tight_layout()
    plt.close(fig)
    return fig


def format_summary(
    study_name: str,
    storage: str,
    metric: str,
    trials,
    new_numbers: list[int],
    best,
    command: str | None,
    imp: dict[str, float],
    *,
    front: list | None = None,
    front_commands: dict[int, str] | None = None,
    pick=None,
) -> str:
    c = counts(trials)
    lines = [
        "",
        f"OPTUNA STUDY '{study_name}' ({storage})",
        f"  this run: {len(new_numbers)} trials; the study: {len(trials)} trials, {c['complete']} complete, "
        f"{c['pruned']} pruned, {c['failed']} failed" + (f", {c['running']} running" if c["running"] else ""),
    ]
    epochs = [max(t.intermediate_values) for t in trials if t.intermediate_values]
    if epochs:
        lines.append(f"  epochs trained (reported): {sum(epochs)} in all")
    if front:
        lines.append(f"  Pareto front ({metric}): {len(front)} trial(s)")
        for t in front:
            params = " ".join(f"{k}={fmt(v)}" for k, v in t.params.items())
            lines.append(f"    trial {t.number}: " + ", ".join(f"{v:.4f}" for v in t.values) + f"   {params}")
            if front_commands and front_commands.get(t.number):
                lines.append(f"      reproduce it: {front_commands[t.number]}")
        if pick is not None:
            lines.append(
                f"  picked: trial {pick.number} (nearest to the ideal point, each objective scaled over the front)"
            )
    elif best is None:
        lines.append("  no trial completed, so there is no best trial yet")
    else:
        params = " ".join(f"{k}={fmt(v)}" for k, v in best.params.items())
        lines.append(f"  best trial {best.number}: {metric} = {best.value:.4f}   {params}")
        if command:
            lines.append(f"  reproduce it: {command}")
    if imp:
        lines.append("  parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
    return "\n".join(lines)


def fmt(v: Any) -> str:
    if not isinstance(v, float):
        return str(v)
    return f"{v:.3g}" if v != 0 and math.isfinite(v) and (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:.4g}"


def pareto_figure(trials, front, metrics: list[str], directions: list[str]):
    """The first two objectives of every complete trial, the Pareto front drawn as a step line (each axis
    labelled with its direction); more than two objectives: the first two, said in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    done = [t for t in trials if t.state.name == "COMPLETE"]
    on_front = {t.number for t in front}
    rest = [t for t in done if t.number not in on_front]
    if rest:
        ax.scatter(
            [t.values[0] for t in rest],
            [t.values[1] for t in rest],
            color="tab:gray",
            alpha=0.6,
            label=f"dominated ({len(rest)})",
        )
    if front:
        pts = sorted((t.values[0], t.values[1], t.number) for t in front)
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="tab:red", alpha=0.5)
        ax.scatter(
            [p[0] for p in pts], [p[1] for p in pts], color="tab:red", zorder=3, label=f"Pareto front ({len(front)})"
        )
        for x, y, n in pts:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{metrics[0]} ({'higher' if directions[0] == 'maximize' else 'lower'} is better)")
    ax.set_ylabel(f"{metrics[1]} ({'higher' if directions[1] == 'maximize' else 'lower'} is better)")
    extra = f" (first 2 of {len(metrics)} objectives)" if len(metrics) > 2 else ""
    ax.set_title(f"Optuna study: complete trials and the Pareto front{extra}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    plt.close(fig)
    return fig
