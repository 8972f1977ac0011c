"""Per-epoch resume state: written atomically after every epoch, read back by `resume=<dir or run id>`;
and the recipe's wiring to it (find the state, save an epoch, mark the run finished, re-attach MLflow).

The state holds everything the next epoch depends on (model, optimizer, scheduler, every random generator,
the stage and epoch, the results so far, the best checkpoint) plus the MLflow run ids, so a resumed run
continues the same MLflow runs. The epoch's metrics are saved as `pending` before they are logged: a kill
between the two is repaired on resume, and no metric is ever logged twice.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ttm_experiments.errors import CheckpointError, ConfigError
from ttm_experiments.models.checkpoint import atomic_save
from ttm_experiments.training.stages import EpochEnd

log = logging.getLogger(__name__)

STATE_FILE = "last.pt"
FORMAT = "ttm-experiments-resume/1"
# what the stopped process recorded about its end: no longer true once the run continues (kept as `resumed.after`)
STALE_TAGS = ("stop_reason", "failure")
# keys that may change between the killed run and its resumption
MAY_DIFFER = (
    "resume",
    "trainer.progress",
    "trainer.num_threads",
    "tracking.log_system_metrics",
    "tracking.system_metrics_interval_s",
)


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every generator a run draws from: torch (CPU, and CUDA when present), numpy, Python, and the loops' own."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        **{f"gen.{k}": g.get_state() for k, g in generators.items()},
    }


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    for k, g in generators.items():
        g.set_state(state[f"gen.{k}"])


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_save({"format": FORMAT, **state}, path)


def load_state(path: Path) -> dict[str, Any]:
    """Read a resume state written by this suite (our own pickle: only load files you wrote)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"resume state {path} cannot be read: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ttm-experiments resume state")
    return state


def locate(resume: str, tracking_uri: str) -> Path:
    """`resume` is a run's output directory or its MLflow (parent) run id -> the state file."""
    candidate = Path(resume).expanduser()
    if candidate.is_dir():
        path = candidate / STATE_FILE
        if not path.is_file():
            raise CheckpointError(
                f"resume={resume}: the directory holds no {STATE_FILE} (was it written by ttm-train?)"
            )
        return path
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(resume)
    except MlflowException as err:  # no such run (an unreachable store is a different error: it propagates)
        raise CheckpointError(
            f"resume={resume} is neither a run directory nor an MLflow run id in {tracking_uri} ({err.error_code}). "
            "Fix: give the run's output directory (runs/outputs/<date>/<time>) or its run id from the MLflow UI."
        ) from None
    out = run.data.tags.get("output_dir")
    if not out or not (Path(out) / STATE_FILE).is_file():
        raise CheckpointError(
            f"resume={resume}: MLflow run found, but its output directory {out} holds no {STATE_FILE}"
        )
    return Path(out) / STATE_FILE


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
        for k in keys
        if not k.startswith(MAY_DIFFER) and saved.get(k) != current.get(k)
    ]


def check_config(state: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    diffs = config_differences(state["config"], current)
    if diffs:
        raise ConfigError(
            f"cannot resume from {path}: the config differs from the one the run started with:\n  "
            + "\n  ".join(diffs)
            + "\nFix: resume with the original overrides, or start a new run (without resume=)."
        )


def find_state(
    *, resume: str | None, output_dir: Path, tracking_uri: str, config: dict[str, Any]
) -> tuple[dict[str, Any], Path] | None:
    """The state to continue from, and its file: `resume=<dir or run id>`, or an unfinished run in
    `output_dir`. Refuses a finished run and one whose config differs from `config` (flattened)."""
    if resume:
        path = locate(resume, tracking_uri)
    elif (output_dir / STATE_FILE).is_file():
        path = output_dir / STATE_FILE
    else:
        return None
    state = load_state(path)
    if state.get("finished"):
        how = "was pruned by its Optuna study" if state.get("pruned") else "already finished"
        raise ConfigError(
            f"the run in {path.parent} {how} (MLflow run {state['run_ids']['parent']}); "
            "nothing to resume. Start a new run without resume=."
        )
    check_config(state, config, path)
    return state, path


def save_epoch(
    path: Path,
    end: EpochEnd,
    *,
    config: dict[str, Any],
    stage_index: int,
    stage_name: str,
    model: torch.nn.Module,
    result: Any,
    best_state: dict | None,
    generators: dict[str, torch.Generator],
    run_ids: dict[str, str | None],
) -> None:
    """Everything needed to continue after `end`; its metrics are `pending` until logged."""
    save_state(
        path,
        {
            "config": config,
            "stage_index": stage_index,
            "stage_name": stage_name,
            "stage_epoch": end.stage_epoch,
            "epoch": end.epoch,
            "model": model.state_dict(),
            "optimizer": end.optimizer.state_dict() if end.optimizer is not None else None,
            "scheduler": end.scheduler.state_dict() if end.scheduler is not None else None,
            "rng": rng_state(generators),
            "result": result,
            "best_state": best_state,
            "run_ids": run_ids,
            "pending": {"epoch": end.epoch, "metrics": end.metrics},
            **end.extra,
        },
    )


def mark_finished(
    path: Path, *, config: dict[str, Any], run_id: str, pruned: bool = False, objective: float | None = None
) -> None:
    """A finished (or pruned) run keeps no resumable state (its results are in MLflow), only a marker with
    what the run returned (an Optuna sweeper killed before it told the trial reads it from here)."""
    save_state(
        path,
        {"finished": True, "pruned": pruned, "config": config, "run_ids": {"parent": run_id}, "objective": objective},
    )


def continue_tracking(tracker, state: dict[str, Any]) -> None:
    """Re-attach the MLflow runs of the killed process and log the epoch it saved but did not log."""
    tracker.attach(state["run_ids"]["parent"], state["run_ids"]["stage"])
    tracker.set_tags({"resumed": "true"})
    for rid in filter(None, (state["run_ids"]["parent"], state["run_ids"]["stage"])):
        tracker.move_tags(STALE_TAGS, "resumed.after", run_id=rid)
    pending = state.get("pending")
    if pending and pending["metrics"]:
        # per run: a kill between the parent's write and the stage run's leaves only the stage run short
        key = next(iter(pending["metrics"]))
        missing = tuple(
            rid
            for rid in filter(None, (state["run_ids"]["parent"], state["run_ids"]["stage"]))
            if not tracker.has_metric_step(key, pending["epoch"], run_id=rid)
        )
        if missing:
            tracker.log_metrics(pending["metrics"], step=pending["epoch"], run_ids=missing)
