"""The end of a study: a study run that MLflow cannot finish fails the sweep, saying where the results are."""

from __future__ import annotations

import optuna
import pytest

from ttm_experiments.errors import TrackingError
from ttm_experiments.search.best import StudyOutcome, log_study


class _BrokenRun:
    def finish(self, *args, **kwargs):
        raise RuntimeError("tracking server went away")


def test_a_study_run_that_cannot_be_finished_is_an_error_not_a_log_line():
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    outcome = StudyOutcome(
        study=study,
        trials=study.get_trials(),
        metrics=["val/auroc"],
        directions=["maximize"],
        results={"name": "optuna"},
        text="summary",
        best=study.best_trial,
        command="ttm-train x=1",
    )
    with pytest.raises(TrackingError, match=r"results are in its storage.*tracking server went away.*rerun"):
        log_study(_BrokenRun(), outcome)
