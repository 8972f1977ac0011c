"""The report's nested cross-validation section: each study's best trial across outer folds, and a config tuned on one
fold but tested on others flagged."""

from __future__ import annotations


def _row(name, fold, *, study=None, tuned_in=None, auroc=0.8, objective=0.7):
    from ttm_experiments.report.runs import Row

    params = {"dataset.fold": str(fold), **({"search.tuned_in": tuned_in} if tuned_in else {})}
    tags = {"optuna.study": study, "optuna.trial": "0"} if study else {}
    return Row(
        run_id=name,
        name=name,
        state="finished",
        params=params,
        tags=tags,
        metrics={"test/auroc": auroc},
        metric="val/auroc",
        objective=objective,
    )


def test_report_aggregates_each_studys_best_trial_across_outer_folds():
    from ttm_experiments.report.nested import nested_markdown

    rows = [
        _row("a", 0, study="s-fold0-split0", auroc=0.70),
        _row("a2", 0, study="s-fold0-split0", auroc=0.99, objective=0.1),
        _row("b", 1, study="s-fold1-split0", auroc=0.80),
        _row("c", 2, study="s-fold2-split0", auroc=0.90),
    ]
    text = "\n".join(nested_markdown(rows))
    assert "Nested cross-validation: `s` (3 of ? outer folds, split seed ?)" in text  # rows without a layout
    assert "mean 0.800, sd 0.100" in text and "0.990" not in text  # the best trial by objective, not by test
    assert "Warning" not in text


def test_report_flags_a_config_tuned_on_one_fold_and_tested_on_others():
    from ttm_experiments.report.nested import mixing_notes

    rows = [
        _row("t", 0, study="s-fold0-split0"),
        _row("cv0", 0, tuned_in="s-fold0-split0"),
        _row("cv3", 3, tuned_in="s-fold0-split0"),
        _row("m1", 1, study="mixed"),
        _row("m2", 2, study="mixed"),
    ]
    notes = mixing_notes(rows)
    assert len(notes) == 2
    assert any("run `cv3` tests fold 3" in n and "study `s-fold0-split0` on fold(s) ['0']" in n for n in notes)
    assert any("study `mixed` holds trials of folds ['1', '2']" in n for n in notes)
