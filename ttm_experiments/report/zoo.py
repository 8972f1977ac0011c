"""The model zoo's report (`ttm-report report.zoo=true`): test AUROC against the share of labelled training
subjects (`dataset.label_fraction`) per backbone and schedule, with intervals, and paired tables against the best
TTM and against the SQI baseline.

A *model* is a backbone with a schedule (`ttm_1024 / progressive`); a baseline backbone (`baseline_sqi`) is one
model whatever its runs' `schedule` (its recipe ignores it). A point of a curve is the mean test AUROC over the
folds of the mean over each fold's seeds, computed from the runs' `test/predictions.csv`; its interval is the
hierarchical bootstrap of `report/paired.py` without the pairing: each replicate draws a fold's seeds with
replacement, then its test subjects, scores every drawn seed on the drawn subjects and averages; folds are drawn
independently and averaged. So the interval speaks to training randomness (seeds) and to who was tested
(subjects); with one seed it speaks to the subjects only, and the table says how many seeds there were.

The paired tables take, per label fraction, the difference in test AUROC of every model against a reference on
the same folds, seeds and test windows (`report/compare.py`'s pairing and `auroc_differences`): the best TTM,
chosen by its mean *validation* AUROC over its runs at the largest fraction (never by test), and the SQI baseline.
A baseline run once per fold (it does not depend on the seed: `make zoo` runs it at one seed) pairs with each seed
of the other model.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ttm_experiments.errors import ConfigError
from ttm_experiments.metrics.classification import subject_weights, weighted_auroc
from ttm_experiments.report import compare as report_compare
from ttm_experiments.report.paired import Difference, PairedFold, auroc_differences, same_windows
from ttm_experiments.report.runs import Row, as_float, collect, connect

N_BOOT = 1000
LEVEL = 0.95
BASELINE_KINDS = ("sqi", "site")


@dataclass
class Point:
    """One model at one label fraction: its mean test AUROC with the interval, and what it rests on."""

    model: str
    fraction: float
    auroc: float
    low: float
    high: float
    folds: int
    seeds: int  # the fewest seeds of any fold
    subjects: float  # mean training subjects kept (metric label/train_subjects)
    runs: int


@dataclass
class Model:
    """The finished runs of one backbone + schedule: fraction -> fold -> seed -> row."""

    name: str
    backbone: str
    kind: str
    schedule: str
    runs: dict[float, dict[int, dict[str, Row]]] = field(default_factory=dict)

    @property
    def is_baseline(self) -> bool:
        return self.kind in BASELINE_KINDS

    def rows(self, fraction: float | None = None) -> list[Row]:
        fractions = [fraction] if fraction is not None else list(self.runs)
        return [row for f in fractions for seeds in self.runs.get(f, {}).values() for row in seeds.values()]


def fraction_of(row: Row) -> float:
    """The run's share of training subjects: `dataset.label_fraction`, or (with `dataset.label_subjects`) the share
    it kept (metric `label/subject_fraction`); 1.0 for runs from before the setting existed."""
    subjects = row.params.get("dataset.label_subjects")
    if subjects not in (None, "None", "null", ""):
        kept = row.metrics.get("label/subject_fraction")
        if kept is None:
            raise ConfigError(f"run {row.run_id} set dataset.label_subjects={subjects} but logged no subject fraction")
        return round(float(kept), 4)
    value = as_float(row.params.get("dataset.label_fraction", "1.0"))
    return 1.0 if value is None else value


def models_of(rows: list[Row]) -> dict[str, Model]:
    """The finished runs with a test AUROC, grouped by model; the newest run of a (fraction, fold, seed) cell wins."""
    models: dict[str, Model] = {}
    for row in sorted(rows, key=lambda r: -r.start_time):
        if row.state != "finished" or "test/auroc" not in row.metrics:
            continue
        backbone = row.params.get("backbone.name", row.tags.get("backbone", "?"))
        kind = row.params.get("backbone.kind", "?")
        schedule = "-" if kind in BASELINE_KINDS else row.params.get("schedule.name", row.tags.get("schedule", "?"))
        name = backbone if schedule == "-" else f"{backbone} / {schedule}"
        model = models.setdefault(name, Model(name, backbone, kind, schedule))
        fold, seed = int(row.params.get("dataset.fold", 0)), row.params.get("seed", "0")
        model.runs.setdefault(fraction_of(row), {}).setdefault(fold, {}).setdefault(seed, row)
    return dict(sorted(models.items()))


class Predictions:
    """Each run's `test/predictions.csv`, downloaded once."""

    def __init__(self, client, folder: Path):
        self.client, self.folder, self.frames = client, folder, {}

    def __call__(self, row: Row) -> pd.DataFrame | None:
        if row.run_id not in self.frames:
            self.frames[row.run_id] = report_compare._predictions(self.client, row.run_id, self.folder / row.run_id)
        return self.frames[row.run_id]


def _auroc_rows(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC per row of `weights` (one-vs-rest macro for more than two classes), NaN where a class has no weight."""
    scored = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean([weighted_auroc(probs[:, j], labels == j, weights) for j in scored], axis=0)


def auroc_interval(folds: list[list[PairedFold]], *, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """Mean over folds of the mean over seeds of AUROC, and its hierarchical (seeds, then subjects) bootstrap
    interval. A fold is a list of runs (one per seed) on the same windows (`probs_a`; `probs_b` is not read)."""
    estimates, draws = [], []
    for i, seeds in enumerate(folds):
        rng = np.random.default_rng([seed, i])
        first = seeds[0]
        weights = subject_weights(first.subjects, rng, n_boot)
        per_seed = np.stack([_auroc_rows(s.labels, s.probs_a, weights) for s in seeds])  # [S, n_boot]
        drawn = rng.integers(0, len(seeds), (n_boot, len(seeds)))
        draws.append(per_seed[drawn, np.arange(n_boot)[:, None]].mean(axis=1))
        full = np.ones((1, len(first.labels)))
        estimates.append(float(np.mean([_auroc_rows(s.labels, s.probs_a, full)[0] for s in seeds])))
    combined = np.mean(np.vstack(draws), axis=0)
    finite = combined[np.isfinite(combined)]
    if len(finite) < n_boot // 2:  # most resamples lacked a class: no interval
        return float(np.mean(estimates)), float("nan"), float("nan")
    alpha = (1 - LEVEL) / 2
    return float(np.mean(estimates)), float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha))


def _single(frame: pd.DataFrame) -> PairedFold:
    columns = [c for c in frame.columns if c.startswith("p_")]
    probs = frame[columns].to_numpy()
    return PairedFold(frame["label"].to_numpy(), frame["subject"].to_numpy(), probs, probs)


def curve_points(model: Model, predictions: Predictions) -> list[Point]:
    points = []
    for fraction, folds in sorted(model.runs.items()):
        per_fold = []
        for _, seeds in sorted(folds.items()):
            frames = [predictions(row) for _, row in sorted(seeds.items())]
            runs = [_single(f) for f in frames if f is not None]
            runs = [r for r in runs if same_windows(r, runs[0])] if runs else []
            if runs:
                per_fold.append(runs)
        if not per_fold:
            continue
        auroc, low, high = auroc_interval(per_fold)
        kept = [r.metrics.get("label/train_subjects") for r in model.rows(fraction)]
        kept = [k for k in kept if k is not None]
        points.append(
            Point(
                model.name,
                fraction,
                auroc,
                low,
                high,
                len(per_fold),
                min(len(f) for f in per_fold),
                float(np.mean(kept)) if kept else float("nan"),
                len(model.rows(fraction)),
            )
        )
    return points


def best_ttm(models: dict[str, Model]) -> Model | None:
    """The TTM model with the highest mean validation AUROC at its largest label fraction (not chosen on test)."""

    def val_auroc(m: Model) -> float:
        rows = m.rows(max(m.runs))
        values = [r.metrics.get("best/val_auroc", r.metrics.get("val/auroc")) for r in rows]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else -np.inf

    ttms = [m for m in models.values() if m.kind == "ttm"]
    return max(ttms, key=val_auroc) if ttms else None


@dataclass
class PairedRow:
    model: str
    reference: str
    fraction: float
    difference: Difference | None
    folds: int
    why: str = ""


def _run_of(model: Model, seeds: dict[str, Row], seed: str) -> Row | None:
    """The run of `seed`; for a baseline that ran one seed, that run: a logistic regression fitted by lbfgs does
    not depend on the seed, so its one run stands for every seed (the pairs then vary the other model's seeds)."""
    if seed in seeds:
        return seeds[seed]
    return next(iter(seeds.values())) if model.is_baseline and len(seeds) == 1 else None


def paired_rows(models: dict[str, Model], reference: Model, predictions: Predictions) -> list[PairedRow]:
    """Every other model minus `reference`, per label fraction, on the folds and seeds both have."""
    out = []
    for model in models.values():
        if model.name == reference.name:
            continue
        for fraction in sorted(set(model.runs) & set(reference.runs)):
            folds, why = [], ""
            mine, theirs = model.runs[fraction], reference.runs[fraction]
            for fold in sorted(set(mine) & set(theirs)):
                seeds = []
                for seed in sorted(set(mine[fold]) | set(theirs[fold])):
                    row, partner = _run_of(model, mine[fold], seed), _run_of(reference, theirs[fold], seed)
                    if row is None or partner is None:
                        continue
                    a, b = predictions(row), predictions(partner)
                    pair = None if a is None or b is None else report_compare._paired_fold(a, b)
                    if pair is None or (seeds and not same_windows(seeds[0], pair)):
                        why = "tested on different windows or without test/predictions.csv"
                        continue
                    seeds.append(pair)
                if seeds:
                    folds.append(seeds)
            diff = auroc_differences(folds, n_boot=N_BOOT)[1] if folds else None
            out.append(PairedRow(model.name, reference.name, fraction, diff, len(folds), why or "no common fold/seed"))
    return out


def curve_figure(points: list[Point], models: dict[str, Model]):
    """AUROC vs label fraction: one panel per backbone, one line per schedule with its 95% interval as error bars,
    and every baseline dashed in each panel."""
    from ttm_experiments.report.plots import pyplot

    if not points:
        return None
    plt = pyplot()
    by_model: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        by_model[p.model].append(p)
    backbones = sorted({models[name].backbone for name in by_model if not models[name].is_baseline}) or ["baselines"]
    baselines = sorted(name for name in by_model if models[name].is_baseline)
    schedules = sorted({models[name].schedule for name in by_model if not models[name].is_baseline})
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(schedules)}
    fractions = sorted({p.fraction for p in points})
    fig, axes = plt.subplots(1, len(backbones), figsize=(5.2 * len(backbones), 4.6), sharey=True, squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        names = [n for n in sorted(by_model) if models[n].backbone == backbone] + baselines
        for j, name in enumerate(names):
            m, pts = models[name], sorted(by_model[name], key=lambda p: p.fraction)
            x = np.array([p.fraction for p in pts]) * (1 + 0.025 * (j - len(names) / 2))  # dodge: bars apart
            y = np.array([p.auroc for p in pts])
            err = np.array([[p.auroc - p.low for p in pts], [p.high - p.auroc for p in pts]])
            ax.errorbar(
                x,
                y,
                yerr=np.nan_to_num(err),
                color="black" if m.is_baseline else colors[m.schedule],
                ls="--" if m.is_baseline else "-",
                marker="x" if m.is_baseline else "o",
                capsize=2,
                lw=1.2,
                ms=4,
                label=m.name if m.is_baseline else m.schedule,
            )
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(backbone, fontsize=10)
        ax.set_xlabel("share of labelled training subjects")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("test AUROC (mean over folds and seeds)")
    fig.suptitle("Label efficiency: 95% intervals from a bootstrap over seeds and test subjects", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _ci(low: float, high: float) -> str:
    return "-" if not np.isfinite(low) else f"[{low:.3f}, {high:.3f}]"


def points_markdown(points: list[Point]) -> list[str]:
    fractions = sorted({p.fraction for p in points})
    lines = [
        "| model | " + " | ".join(f"fraction {f:g}" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    by_model: dict[str, dict[float, Point]] = defaultdict(dict)
    for p in points:
        by_model[p.model][p.fraction] = p
    for name, pts in sorted(by_model.items()):
        cells = [pts.get(f) for f in fractions]
        lines.append(
            f"| {name} | "
            + " | ".join("-" if p is None else f"{p.auroc:.3f} {_ci(p.low, p.high)}" for p in cells)
            + " |"
        )
    return lines


def paired_markdown(rows: list[PairedRow], title: str) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| model | fraction | difference [95% CI] | folds | seeds | |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.model, r.fraction)):
        d = r.difference
        if d is None or d.n == 0:
            lines.append(
                f"| {r.model} | {r.fraction:g} | - ({r.why if d is None else 'no interval'}) | {r.folds} | | |"
            )
            continue
        flag = ("**higher**" if d.low > 0 else "**lower**") if d.excludes_zero else "contains 0"
        lines.append(
            f"| {r.model} | {r.fraction:g} | {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | {r.folds} | "
            f"{d.n_seeds} | {flag} |"
        )
    return lines + [""]


def build_zoo(*, uri: str, experiment: str, sweep: str | None, out_dir: Path, max_runs: int) -> dict[str, Any]:
    """Read the runs, write `zoo.md`, `zoo_curve.png`, `zoo_points.csv`, `zoo_paired.csv` to `out_dir`."""
    client, experiment_id = connect(uri, experiment)
    rows, _ = collect(client, experiment_id, sweep, max_runs)
    models = models_of(rows)
    if not models:
        raise ConfigError(
            f"report.zoo: no finished ttm-train run with a test AUROC in experiment {experiment!r} ({uri}); "
            "run `make zoo` (or ttm-train -m ... experiment_name=<it>) first"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        predictions = Predictions(client, Path(tmp))
        points = [p for m in models.values() for p in curve_points(m, predictions)]
        reference = best_ttm(models)
        sqi = next((m for m in models.values() if m.kind == "sqi"), None)
        vs_ttm = paired_rows(models, reference, predictions) if reference is not None else []
        vs_sqi = paired_rows(models, sqi, predictions) if sqi is not None else []
    files = [out_dir / "zoo.md", out_dir / "zoo_points.csv", out_dir / "zoo_paired.csv"]
    pd.DataFrame([vars(p) for p in points]).to_csv(files[1], index=False)
    paired = [
        {
            "model": r.model,
            "reference": r.reference,
            "fraction": r.fraction,
            "folds": r.folds,
            **(
                {"difference": r.difference.estimate, "low": r.difference.low, "high": r.difference.high}
                if r.difference is not None
                else {}
            ),
            "seeds": r.difference.n_seeds if r.difference is not None else 0,
        }
        for r in vs_ttm + vs_sqi
    ]
    pd.DataFrame(paired).to_csv(files[2], index=False)
    fig = curve_figure(points, models)
    if fig is not None:
        fig.savefig(out_dir / "zoo_curve.png", dpi=110, bbox_inches="tight")
        files.append(out_dir / "zoo_curve.png")
    n_runs = sum(len(m.rows()) for m in models.values())
    seeds = sorted({s for m in models.values() for f in m.runs.values() for d in f.values() for s in d})
    folds = sorted({fold for m in models.values() for f in m.runs.values() for fold in f})
    table = points_markdown(points)
    lines = [
        f"# ttm-report: model zoo, experiment `{experiment}`" + (f", sweep `{sweep}`" if sweep else ""),
        "",
        f"{n_runs} finished runs of {len(models)} models from `{uri}`: folds {folds}, seeds {seeds}.",
        "",
        "## Test AUROC vs share of labelled training subjects",
        "",
        "Mean over folds of the mean over seeds; 95% interval from a hierarchical bootstrap (each fold's seeds, then "
        f"its test subjects; {N_BOOT} replicates). Validation and test subjects are the same at every fraction. "
        "The labelled training subjects are one draw per fold (from dataset.split_seed, shared by the seeds): the "
        "intervals do not include other draws, which matter most at small fractions.",
        "",
        *table,
        "",
        "![AUROC vs label fraction](zoo_curve.png)",
        "",
        "## Paired differences in test AUROC (same folds, seeds and test windows; seeds then subjects resampled)",
        "",
    ]
    if reference is not None:
        lines += [
            f"Best TTM: **{reference.name}**, chosen by mean validation AUROC at label fraction "
            f"{max(reference.runs):g} (not on test).",
            "",
            *paired_markdown(vs_ttm, f"model - {reference.name}"),
        ]
    if sqi is not None:
        lines += paired_markdown(vs_sqi, f"model - {sqi.name}")
    files[0].write_text("\n".join(lines) + "\n")
    return {"rows": rows, "files": files, "table": "\n".join(table), "points": points, "paired": vs_ttm + vs_sqi}
