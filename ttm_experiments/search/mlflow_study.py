"""The study's run in MLflow: the parent of every trial's run, with the study's progress and result.

    study unfreeze_lr                (tags ttm.kind=study, optuna.study, optuna.storage; metrics trial/value,
    |                                 study/best_value per trial; at the end the best value, the best command,
    |                                 parameter importances, the best trial's config)
    +-- trial-0                      (the train run of trial 0: tags optuna.trial, optuna.state, sweep)
    |   +-- head / partial / full    (its stage runs, as in every ttm-train run)
    +-- trial-1 ...

Trials point at the study run through `mlflow.parentRunId`, so the MLflow UI shows the study as a
collapsible parent with its trials below it (and each trial's stages below the trial). A resumed study
reuses its run (found by study name and storage), so all its trials stay under one parent.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ttm_experiments.tracking.mlflow_tracker import MlflowTracker, _retry_locked

log = logging.getLogger(__name__)


def _quoted(text: str) -> str:
    """A string literal for an MLflow filter."""
    return f'"{text}"' if "'" in text else f"'{text}'"


class StudyRun:
    def __init__(self, uri: str, experiment_name: str, study_name: str, storage: str, tags: dict[str, str]):
        # connecting creates the store and the experiment, before any job starts (no creation race)
        self.tracker = MlflowTracker(uri, experiment_name)
        client = self.tracker.client
        query = (
            f"tags.`ttm.kind` = 'study' and tags.`optuna.study` = {_quoted(study_name)} "
            f"and tags.`optuna.storage` = {_quoted(storage)}"
        )
        found = _retry_locked(
            lambda: client.search_runs(
                [self.tracker.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"]
            )
        )
        all_tags = {"ttm.kind": "study", "optuna.study": study_name, "optuna.storage": storage, **tags}
        self.resumed = bool(found)
        if found:
            self.tracker.run_id = found[0].info.run_id
            run_id = self.tracker.run_id
            _retry_locked(lambda: client.update_run(run_id, status="RUNNING"))
            self.tracker.set_tags(all_tags)
        else:
            self.tracker.start_run(f"study {study_name}", all_tags)
        log.info(
            "MLflow: study run %s in experiment '%s' (%s)%s",
            self.run_id,
            experiment_name,
            uri,
            " (resumed)" if self.resumed else "",
        )

    @property
    def run_id(self) -> str:
        assert self.tracker.run_id is not None
        return self.tracker.run_id

    def trial_finished(
        self,
        number: int,
        state: str,
        value: float | None,
        run_id: str | None,
        best_value: float | None,
        counts: dict[str, int],
    ) -> None:
        """Tag the trial's run with its final state; plot the study's progress on the study run."""
        client = self.tracker.client
        if run_id:
            tags = {"optuna.state": state}
            if value is not None:
                tags["optuna.value"] = f"{value:.6g}"
            for key, text in tags.items():
                _retry_locked(lambda key=key, text=text: client.set_tag(run_id, key, text))
        metrics: dict[str, float] = {f"study/{k}": float(v) for k, v in counts.items()}
        if value is not None and state == "COMPLETE":
            metrics["trial/value"] = value
        if best_value is not None:
            metrics["study/best_value"] = best_value
        self.tracker.log_metrics(metrics, step=number)

    def finish(
        self,
        tags: dict[str, str],
        metrics: dict[str, float],
        texts: dict[str, str],
        figures: dict[str, Any],
        files: list[Path],
        status: str = "FINISHED",
    ) -> None:
        if tags:
            self.tracker.set_tags(tags)
        if metrics:
            self.tracker.log_metrics(metrics, step=0)
        for name, text in texts.items():
            self.tracker.log_text(text, name)
        for name, fig in figures.items():
            self.tracker.log_figure(fig, name)
        for path in files:
            self.tracker.log_artifact(path)
        self.tracker.end_run(status)

    def end(self, status: str) -> None:
        try:
            self.tracker.end_run(status)
        except Exception:  # the error that ended the study matters more
            log.exception("could not end the MLflow study run %s", self.run_id)
