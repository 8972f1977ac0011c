"""Paired comparisons for `ttm-report`: runs that differ in one setting on the same folds and split seed.

A *setting* is a config group with a name (`schedule`, `backbone`: every `schedule.*` param follows
`schedule.name`) or a single param (`optim.lr`). Two finished runs pair when their params agree on everything
except that setting (`paths.*`, `tracking.*`, `search.*` and similar bookkeeping aside), on the same
`dataset.fold` and `seed`. Per fold: AUROC(value) - AUROC(baseline) on the same test windows, averaged over the
fold's seeds, with a hierarchical bootstrap (seeds, then subjects, paired: `report/paired.py`) on the runs'
`test/predictions.csv`; across folds: the mean difference and its interval. With one seed the verdict says that
it rests on one training run per fold.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ttm_experiments.errors import ConfigError
from ttm_experiments.report.paired import Difference, PairedFold, auroc_differences, same_windows
from ttm_experiments.report.runs import is_bookkeeping, shown_value

PREDICTIONS_ARTIFACT = "test/predictions.csv"  # written by training/record.py (not imported: it pulls in torch)

# the comparison pairs runs on these
_PAIRED_ON = ("dataset.fold", "seed")


@dataclass
class Comparison:
    """`value` against `baseline` for one setting and one set of other params: per fold, a pair of runs per seed."""

    setting: str
    value: str
    baseline: str
    runs: dict[int, list[tuple]] = field(default_factory=dict)  # fold -> [(row of value, row of baseline)] per seed
    per_fold: dict[int, Difference] = field(default_factory=dict)
    combined: Difference | None = None
    skipped: dict[int, str] = field(default_factory=dict)  # fold -> why it has no interval

    @property
    def seeds(self) -> list[str]:
        return sorted({row.params.get("seed", "0") for pairs in self.runs.values() for row, _ in pairs})

    @property
    def title(self) -> str:
        n, key = len(self.seeds), self.setting
        value, baseline = shown_value(key, self.value), shown_value(key, self.baseline)
        return f"{key}={value} - {key}={baseline} ({n} seed{'s' if n != 1 else ''})"


def setting_keys(setting: str, params: dict[str, str]) -> tuple[str, list[str]]:
    """The param that names the setting's value and every param the setting owns."""
    if f"{setting}.name" in params:
        return f"{setting}.name", [k for k in params if k.startswith(setting + ".")]
    return setting, [setting]


def varying_settings(rows: list) -> list[str]:
    """Settings whose value differs among the finished runs (groups by their `.name`, other params one by one)."""
    params = [r.params for r in rows if r.state == "finished"]
    groups = sorted({k[:-5] for p in params for k in p if k.endswith(".name") and k.count(".") == 1})
    found = [g for g in groups if g != "dataset" and len({p.get(f"{g}.name") for p in params}) > 1]
    singles = sorted(
        {
            k
            for p in params
            for k in p
            if not is_bookkeeping(k) and k not in _PAIRED_ON and not k.startswith(tuple(g + "." for g in groups))
        }
    )
    return found + [k for k in singles if len({p.get(k) for p in params}) > 1]


def _derived(row, owned: list[str]) -> set[str]:
    """Params that take their value from the setting (`unfreeze.pattern: ${backbone.block_pattern}`): a text
    value equal to one of the setting's own params in the same run. Numbers are left out: a coincidence
    (`unfreeze.last_n=2`, `backbone.num_layers=2`) would hide a real difference."""
    own = {row.params[o] for o in owned if o in row.params and not _numeric(row.params[o])}
    return {k for k, v in row.params.items() if k not in owned and v in own}


def _numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return value in ("True", "False", "None", "true", "false", "null", "")
    return True


def _signature(row, owned: list[str]) -> tuple:
    derived = _derived(row, owned)
    return tuple(
        sorted(
            (k, v)
            for k, v in row.params.items()
            if not is_bookkeeping(k) and k not in _PAIRED_ON and k not in owned and k not in derived
        )
    )


def comparisons(rows: list, setting: str, baseline: str | None) -> list[Comparison]:
    """The pairs of finished runs that differ only in `setting` (same fold and seed), grouped by value and the other
    params; a comparison holds every fold and seed it has pairs for."""
    done = [r for r in rows if r.state == "finished" and "test/auroc" in r.metrics]
    name_key = setting_keys(setting, done[0].params)[0] if done else setting
    values = sorted({r.params.get(name_key) for r in done} - {None})
    base = baseline if baseline is not None else (values[0] if values else None)
    if base not in values:
        return []
    cells: dict[tuple, object] = {}
    for r in sorted(done, key=lambda row: -row.start_time):  # the newest run of each cell wins, not the best one
        owned = setting_keys(setting, r.params)[1]
        key = (r.params.get(name_key), r.params.get("seed", "0"), _signature(r, owned), int(r.params["dataset.fold"]))
        cells.setdefault(key, r)
    found: dict[tuple, Comparison] = {}
    for (value, seed, signature, fold), row in cells.items():
        partner = cells.get((base, seed, signature, fold))
        if value == base or partner is None:
            continue
        comp = found.setdefault((value, signature), Comparison(setting, value, base))
        comp.runs.setdefault(fold, []).append((row, partner))
    for comp in found.values():
        for pairs in comp.runs.values():
            pairs.sort(key=lambda pair: pair[0].params.get("seed", "0"))
    return sorted(found.values(), key=lambda c: c.value)


def _predictions(client, run_id: str, cache: Path) -> pd.DataFrame | None:
    folder, name = PREDICTIONS_ARTIFACT.rsplit("/", 1)
    if not any(f.path.endswith(name) for f in client.list_artifacts(run_id, folder)):
        return None
    return pd.read_csv(client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, str(cache)), dtype={"subject": str})


def _paired_fold(a: pd.DataFrame, b: pd.DataFrame) -> PairedFold | None:
    """Both runs' windows as one fold; None when they were not scored on the same windows."""
    if len(a) != len(b) or not (a["subject"].equals(b["subject"]) and a["label"].equals(b["label"])):
        return None
    columns = [c for c in a.columns if c.startswith("p_")]
    return PairedFold(a["label"].to_numpy(), a["subject"].to_numpy(), a[columns].to_numpy(), b[columns].to_numpy())


def score(client, comparison: Comparison, *, n_boot: int = 1000) -> None:
    """Fill a comparison's per-fold and combined intervals from the runs' test predictions."""
    folds, order = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for fold, pairs in sorted(comparison.runs.items()):
            seeds, why = [], None
            for row, partner in pairs:
                frames = [_predictions(client, r.run_id, Path(tmp) / r.run_id) for r in (row, partner)]
                if any(f is None for f in frames):
                    why = f"a run has no {PREDICTIONS_ARTIFACT}: rerun it"
                    break
                paired = _paired_fold(*frames)
                if paired is None or (seeds and not same_windows(seeds[0], paired)):
                    why = "the runs were tested on different windows (split or data differ)"
                    break
                seeds.append(paired)
            if why is not None:
                comparison.skipped[fold] = why
                continue
            folds.append(seeds)
            order.append(fold)
    if folds:
        per_fold, comparison.combined = auroc_differences(folds, n_boot=n_boot)
        comparison.per_fold = dict(zip(order, per_fold))


def resolve(rows: list, compare: str | None, baseline: str | None) -> list[tuple[str, str | None]]:
    """(setting, baseline) pairs to compare: `report.compare` checked against the runs, or every varying setting."""
    varying = varying_settings(rows)
    params = [r.params for r in rows if r.state == "finished"]
    if compare is not None:
        name_key = setting_keys(compare, params[0])[0] if params else compare
        values = sorted({p.get(name_key) for p in params} - {None})
        if not values:
            raise ConfigError(
                f"report.compare={compare!r}: no finished run has a param {compare} or {compare}.name; "
                f"settings that vary here: {varying}"
            )
        if baseline is not None and baseline not in values:
            raise ConfigError(f"report.baseline={baseline!r} is not a value of {compare} in these runs: {values}")
        return [(compare, baseline)]
    chosen = [(s, baseline if baseline in {p.get(setting_keys(s, p)[0]) for p in params} else None) for s in varying]
    if baseline is not None and all(b is None for _, b in chosen):
        raise ConfigError(
            f"report.baseline={baseline!r} is no value of a setting that varies ({varying}); "
            "set report.compare=<setting> with one of its values"
        )
    return chosen


def _ci(d: Difference) -> str:
    return f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


def _verdict(d: Difference) -> str:
    if d.n == 0:
        return "no interval (no resample held every class)"
    basis = (
        "; it rests on one training run per fold, so it cannot speak to training (seed) variance: repeat over seeds "
        "(`make compare`)"
        if d.n_seeds < 2
        else f"; over {d.n_seeds} seeds and the test subjects"
    )
    if not d.excludes_zero:
        return f"not distinguishable from zero (the interval contains 0){basis}"
    return f"distinguishable from zero: {'higher' if d.low > 0 else 'lower'} (the interval excludes 0){basis}"


def _test_auroc(rows: list) -> str:
    values = [r.metrics["test/auroc"] for r in rows if "test/auroc" in r.metrics]
    if not values:
        return "-"
    return f"{values[0]:.3f}" if len(values) == 1 else f"{np.mean(values):.3f} (mean of {len(values)})"


def comparison_markdown(comps: list[Comparison], notes: list[str]) -> list[str]:
    """The paired-comparison section of report.md: one table per comparison, then the verdict in words."""
    lines = [
        "## Paired comparisons (test AUROC difference, hierarchical bootstrap over seeds and subjects, 95% interval)",
        "",
        "Each bootstrap replicate draws a fold's seeds, then its test subjects, and scores both runs of a drawn "
        "seed on the same subjects; across folds, each fold is resampled independently and the fold differences "
        "averaged.",
        "",
    ]
    lines += [f"- {n}" for n in notes]
    if not comps:
        lines += [
            "No pair of finished runs differs in one setting only on the same fold, seed and split seed "
            "(e.g. `ttm-train -m schedule=progressive,head_only dataset.fold=0,1,2,3,4`).",
            "",
        ]
    for c in comps:
        lines += [
            "",
            f"### {c.title}",
            "",
            "| fold | test AUROC " + c.value + " | test AUROC " + c.baseline + " | difference [95% CI] | |",
            "|---|---|---|---|---|",
        ]
        for fold, pairs in sorted(c.runs.items()):
            d = c.per_fold.get(fold)
            cell = _ci(d) if d is not None else c.skipped.get(fold, "-")
            flag = "" if d is None else ("**excludes 0**" if d.excludes_zero else "contains 0")
            values, baselines = [r for r, _ in pairs], [p for _, p in pairs]
            lines.append(f"| {fold} | {_test_auroc(values)} | {_test_auroc(baselines)} | {cell} | {flag} |")
        if c.combined is not None:
            lines += [
                f"| all {len(c.per_fold)} folds (mean) | | | {_ci(c.combined)} | |",
                "",
                f"Across folds, {c.setting}={c.value} minus {c.setting}={c.baseline}: {_ci(c.combined)}, "
                f"{_verdict(c.combined)}.",
            ]
    return lines + [""]


def seed_spread(rows: list) -> pd.DataFrame:
    """Runs that differ only in `seed` (same fold and everything else): the spread of their test AUROC."""
    groups: dict[tuple, list] = {}
    for r in rows:
        if r.state == "finished" and "test/auroc" in r.metrics:
            key = (_signature(r, []), r.params.get("dataset.fold"))
            groups.setdefault(key, []).append(r)
    out = []
    for (_, fold), runs in groups.items():
        if len({r.params.get("seed") for r in runs}) > 1:
            values = np.array([r.metrics["test/auroc"] for r in runs])
            out.append(
                {
                    "runs": ", ".join(r.name for r in runs),
                    "fold": fold,
                    "seeds": len(runs),
                    "mean": values.mean(),
                    "sd": values.std(ddof=1),
                    "min": values.min(),
                    "max": values.max(),
                }
            )
    return pd.DataFrame(out)


def seed_markdown(spread: pd.DataFrame) -> list[str]:
    if spread.empty:
        return []
    lines = [
        "## Across seeds (runs differing only in `seed` on the same fold)",
        "",
        "| runs | fold | seeds | test AUROC mean | sd | min | max |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.runs} | {r.fold} | {r.seeds} | {r.mean:.3f} | {r.sd:.3f} | {r.min:.3f} | {r.max:.3f} |"
        for r in spread.itertuples()
    ]
    return lines + [""]


def forest_figure(comps: list[Comparison]):
    """Each fold's difference with its interval, and the mean across folds (diamond), per comparison."""
    from ttm_experiments.report.plots import pyplot

    scored = [c for c in comps if c.per_fold]
    if not scored:
        return None
    plt = pyplot()
    labels, points = [], []
    for c in scored:
        points += [(d, "o", "tab:blue") for _, d in sorted(c.per_fold.items())] + [(c.combined, "D", "black")]
        labels += [f"{c.title}: fold {f}" for f in sorted(c.per_fold)] + [f"{c.title}: mean of folds"]
    fig, ax = plt.subplots(figsize=(8.5, 0.38 * len(points) + 1.4))
    for y, (d, marker, color) in enumerate(points):
        ax.errorbar(
            d.estimate,
            y,
            xerr=[[d.estimate - d.low], [d.high - d.estimate]],
            fmt=marker,
            color=color,
            capsize=3,
            ms=6 if marker == "D" else 5,
        )
    ax.axvline(0, color="tab:red", ls="--", lw=1)
    ax.set_yticks(range(len(points)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test AUROC difference (hierarchical bootstrap over seeds and subjects, 95% interval)")
    ax.set_title("Paired comparisons: intervals that cross the red line are not distinguishable from zero", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig
