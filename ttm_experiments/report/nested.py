"""Nested cross-validation in `ttm-report`: the outer test AUROC of each study's best trial, across folds, and
the runs whose tuning and testing folds differ.

Rule for a mixed estimate: a study's fold is the `dataset.fold` of its trials (tag `optuna.study`); a run
whose `search.tuned_in` (set by the study's best command) names a study of another fold, or a study whose
trials span several folds, is flagged: its test result is not a nested estimate.
"""

from __future__ import annotations

import re

import numpy as np
from scipy import stats


def _family(study: str, row) -> tuple[str, str, str]:
    """The studies of one nested CV: the study's name without its fold, and the layout of its outer split (number
    of folds, split seed). Studies of another layout are another family, never averaged in."""
    name = re.sub(r"-fold\d+(-of\d+)?-split\d+$", "", study)
    return name, row.params.get("dataset.n_folds", "?"), row.params.get("dataset.split_seed", "?")


def study_folds(rows: list) -> dict[str, set[str]]:
    folds: dict[str, set[str]] = {}
    for r in rows:
        if r.tags.get("optuna.study"):
            folds.setdefault(r.tags["optuna.study"], set()).add(r.params.get("dataset.fold", "?"))
    return folds


def best_trials(rows: list) -> dict[str, object]:
    """Each study's best finished trial (rows are ranked best first by the objective). A multi-objective study has
    no single best: its pick is the Pareto-front trial its sweeper tagged `optuna.pareto_pick` (nearest to the ideal
    point with each objective scaled over the front, search/best.py: pick_from_front). A study with inner
    cross-validation (search/inner_cv.py) is represented by its refit on the outer split (tag `optuna.refit`);
    its inner-fold runs (tag `optuna.inner_fold`) never are: their "test" split is an inner validation fold."""
    best: dict[str, object] = {}
    picked: dict[str, object] = {}
    inner: set[str] = set()
    for r in rows:
        study = r.tags.get("optuna.study")
        if not study or r.state != "finished" or "test/auroc" not in r.metrics:
            continue
        if r.tags.get("optuna.inner_fold") is not None:
            inner.add(study)
            continue
        if r.tags.get("optuna.refit") == "true":
            picked.setdefault(study, r)  # the newest refit first (rows of one rank: MLflow's order)
            continue
        best.setdefault(study, r)
        if r.tags.get("optuna.pareto_pick") == "true":
            picked[study] = r
    return {s: r for s, r in {**best, **picked}.items() if s not in inner or s in picked}


def mixing_notes(rows: list) -> list[str]:
    """Runs tested on a fold other than the one their hyperparameters were tuned on, and multi-fold studies."""
    folds = study_folds(rows)
    notes = [
        f"study `{s}` holds trials of folds {sorted(f)}: its best trial was selected on several folds' "
        "subjects, not a nested estimate"
        for s, f in folds.items()
        if len(f) > 1
    ]
    for r in rows:
        tuned = r.params.get("search.tuned_in")
        if (
            tuned
            and tuned != "None"
            and r.params.get("dataset.fold") not in folds.get(tuned, {r.params.get("dataset.fold")})
        ):
            notes.append(
                f"run `{r.name}` tests fold {r.params.get('dataset.fold')} with hyperparameters tuned in "
                f"study `{tuned}` on fold(s) {sorted(folds[tuned])}: tuned on another fold, so its test "
                "subjects may have chosen them; not a nested estimate"
            )
    return notes


def nested_markdown(rows: list) -> list[str]:
    """Per study family: each outer fold's best trial and its test AUROC, then mean, sd and a t interval."""
    best = best_trials(rows)
    families: dict[str, list] = {}
    for study, row in sorted(best.items()):
        families.setdefault(_family(study, row), []).append((study, row))
    lines, notes = [], mixing_notes(rows)
    if notes:
        lines += ["## Warning: tuning and test folds mixed", "", *[f"- {n}" for n in notes], ""]
    for (family, n_folds, split_seed), members in families.items():
        folds = [r.params.get("dataset.fold") for _, r in members]
        if len(members) < 2 or len(set(folds)) < len(folds):
            continue  # not a nested CV: one study, or several studies per fold
        values = np.array([r.metrics["test/auroc"] for _, r in members])
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        lines += [
            f"## Nested cross-validation: `{family}` ({len(members)} of {n_folds} outer folds, split seed "
            f"{split_seed})",
            "",
            "Each outer fold's study selected on validation subjects only (fold k+1); its best trial's "
            "test AUROC on fold k is the outer estimate. With inner cross-validation (`search.inner_folds`) the "
            "study selected on inner folds of the training and validation subjects, and the outer estimate is the "
            "test AUROC of the refit of its best configuration on the outer split (best trial: `refit`).",
            "",
            "| outer fold | study | best trial | objective | outer test AUROC |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.params.get('dataset.fold')} | {s} | "
            f"{'refit' if r.tags.get('optuna.refit') == 'true' else r.tags.get('optuna.trial', '-')} | "
            f"{'-' if r.objective is None else f'{r.objective:.3f}'} | {r.metrics['test/auroc']:.3f} |"
            for s, r in members
        ]
        lines += [
            "",
            f"Outer test AUROC across folds: mean {values.mean():.3f}, sd {values.std(ddof=1):.3f}, "
            f"95% t interval [{values.mean() - half:.3f}, {values.mean() + half:.3f}].",
            "",
        ]
    return lines
