"""MLflow run names that say what a run is.

    a sweep job or a run with overrides   last_n=2 lr=0.001          (its overrides, keys shortened)
    a run without overrides               ttm_1024 progressive       (backbone and schedule)
    an Optuna trial                       trial 3: last_n=2 lr=0.0004
    `run_name=...`                        wins over all of these

Stage runs are named after their stage, a study's run after its study (`search/mlflow_study.py`). The full
override list stays in the run's `overrides` tag; the name is for reading the runs table.
"""

from __future__ import annotations

from typing import Iterable

# overrides that do not change what is trained (where it is written, how it is tracked or shown), or that
# the sweeper sets on every trial: left out of names
NOISE = (
    "hydra",
    "search",
    "tracking",
    "paths",
    "experiment_name",
    "run_name",
    "resume",
    "debug",
    "hparams_search",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.device",
    "dataset.root",
    "dataset.pretrain_root",
)
MAX_LENGTH = 96  # the runs table shows about this much; longer names are cut with an ellipsis


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _noise(key: str) -> bool:
    return any(key == n or key.startswith((n + ".", n + "/")) for n in NOISE)


def describe_overrides(overrides: Iterable[str], *, max_length: int = MAX_LENGTH) -> str:
    """`unfreeze.last_n=2 optim.lr=0.001` -> `last_n=2 lr=0.001`: noise dropped, each key cut to its last part
    where no other kept key ends the same way, capped at `max_length` characters."""
    kept = [o for o in overrides if "=" in o and not _noise(_key(o))]
    lasts = [_key(o).rsplit(".", 1)[-1] for o in kept]
    parts = []
    for override, last in zip(kept, lasts):
        key, value = override.split("=", 1)
        short = last if lasts.count(last) == 1 else key.lstrip("+")
        parts.append(f"{'~' if key.startswith('~') else ''}{short}={value}")
    return cap(" ".join(parts), max_length)


def cap(text: str, max_length: int) -> str:
    return text if len(text) <= max_length else text[: max_length - 1].rstrip() + "…"


def run_name(*, explicit: str | None, overrides: Iterable[str], backbone: str, schedule: str) -> str:
    """The parent run's name: `run_name=` when given, else the overrides, else `<backbone> <schedule>`."""
    if explicit:
        return explicit
    return describe_overrides(overrides) or f"{backbone} {schedule}"
