"""Optuna storage and pruner specs, shared by the sweeper (the parent process) and the jobs (any process).

A job finds its study and trial through the storage URL and the trial number it gets as overrides
(`search.storage`, `search.study_name`, `search.trial_number`), never through shared memory, so pruning
works with every launcher: in-process, joblib, submitit (local or SLURM), several machines on one RDB.

Storage URLs: `sqlite:///runs/optuna.db` (the default), any SQLAlchemy URL (`postgresql://...` for many
machines), or a plain file path for Optuna's journal file storage (`runs/optuna.journal`), which behaves
better than SQLite with many local processes. `optuna-dashboard <url or path>` opens each of them.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from pathlib import Path
from typing import Any, Mapping

from ttm_experiments.config.schema import PrunerKind, parse_pruner
from ttm_experiments.errors import ConfigError, StoreError

log = logging.getLogger(__name__)

# pruner -> Optuna class; `none` reports the values but never prunes
PRUNERS = {
    PrunerKind.median: "MedianPruner",
    PrunerKind.percentile: "PercentilePruner",
    PrunerKind.hyperband: "HyperbandPruner",
    PrunerKind.successive_halving: "SuccessiveHalvingPruner",
    PrunerKind.threshold: "ThresholdPruner",
    PrunerKind.wilcoxon: "WilcoxonPruner",
    PrunerKind.none: "NopPruner",
}


def normalize_storage(url: str) -> str:
    """Absolute paths, so that a job started in another directory (submitit, SLURM) opens the same store."""
    url = str(url).strip()
    if not url:
        raise ConfigError("the Optuna storage is empty: give a URL such as sqlite:///runs/optuna.db")
    if url.startswith("sqlite://"):
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise ConfigError(
                f"storage {url!r} lives in memory: jobs in other processes could not find their trial. "
                "Use a file, e.g. sqlite:///runs/optuna.db"
            )
        return "sqlite:///" + str(Path(path).expanduser().resolve())
    if "://" not in url:
        return str(Path(url).expanduser().resolve())
    return url


def display_storage(url: str) -> str:
    """The URL without its password, for logs and MLflow tags."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


@functools.lru_cache(maxsize=8)
def open_storage(url: str):
    """The storage object for a normalised URL, one per process (SQLite waits for locks instead of failing)."""
    import optuna

    try:
        if url.startswith("sqlite:///"):
            from ttm_experiments.utils.locks import file_lock

            db = Path(url[len("sqlite:///") :])
            db.parent.mkdir(parents=True, exist_ok=True)
            # Optuna creates its tables on first use: one process at a time (workers started together race)
            with file_lock(
                db,
                what=f"the Optuna storage {url}",
                fix="an RDB server (hydra.sweeper.storage=postgresql://...) or a storage file on a local disk",
            ):
                return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url))
        return _open_rdb(url)
    except StoreError:  # no working file locks: the message says what to use instead
        raise
    except Exception as err:  # a missing driver, an unreachable server, a read-only directory
        fix = (
            "install the driver: pip install 'ttm-experiments[postgres]'"
            if isinstance(err, ImportError)
            else "start the database server or fix hydra.sweeper.storage (host, port, user, password, database)"
            if "://" in url and not url.startswith("sqlite")
            else "point hydra.sweeper.storage at a writable file"
        )
        raise ConfigError(
            f"the Optuna storage {display_storage(url)} cannot be opened: "
            f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__}; "
            f"{fix}"
        ) from None


def _open_rdb(url: str, attempts: int = 5):
    """An RDB storage (PostgreSQL, MySQL). Workers started together on an empty database race to create Optuna's
    tables (`create_all` checks, then creates): the loser's CREATE fails with a duplicate-object error, and a retry
    finds the tables the winner made. A host that never answers fails after 10 s instead of the OS's minutes."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (IntegrityError, ProgrammingError) as err:
            if attempt + 1 == attempts or "already exists" not in str(err) and "duplicate key" not in str(err):
                raise
            log.warning(
                "the Optuna tables were being created by another worker; opening %s again", display_storage(url)
            )
            time.sleep(0.5 * (attempt + 1))


def pruner_spec(value: Any) -> str:
    """The sweeper's `pruner` setting as the one-line spec a job gets in `search.pruner`.

    `median`, `hyperband`, `none` (or null), or a mapping with `type` (or `_target_: optuna.pruners.X`) and the
    pruner's arguments: `{type: median, n_startup_trials: 3, n_warmup_steps: 4}` ->
    `median:n_startup_trials=3,n_warmup_steps=4`. The spec is checked by building the pruner once.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None or value is False:
        spec = "none"
    elif isinstance(value, str):
        spec = value.strip() or "none"
    elif isinstance(value, Mapping):
        args = dict(value)
        name = args.pop("type", None)
        target = args.pop("_target_", None)
        if target is not None:
            cls = str(target).rsplit(".", 1)[-1]
            names = [kind.value for kind, c in PRUNERS.items() if c == cls]
            if not names:
                raise ConfigError(
                    f"hydra.sweeper.pruner._target_={target}: supported pruners are {sorted(PRUNERS.values())}"
                )
            name = names[0]
        if name is None:
            raise ConfigError(f"hydra.sweeper.pruner={value}: give its type, e.g. {{type: median, n_warmup_steps: 4}}")
        spec = str(name) + (":" + ",".join(f"{k}={_scalar(v)}" for k, v in args.items()) if args else "")
    else:
        raise ConfigError(
            f"hydra.sweeper.pruner={value!r}: use one of {sorted(k.value for k in PRUNERS)} or a mapping with 'type'"
        )
    build_pruner(spec)
    return spec


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v)
    raise ConfigError(f"pruner argument {v!r}: only numbers, strings, booleans and null are supported")


def build_pruner(spec: str | None):
    """`median:n_warmup_steps=4` -> `optuna.pruners.MedianPruner(n_warmup_steps=4)`; the error names the spec."""
    import optuna
    import yaml

    spec = (spec or "none").strip()
    kind, arg_text = parse_pruner(spec)
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in arg_text.split(","))):
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"pruner '{spec}': '{item}' is not key=value")
        kwargs[key.strip()] = yaml.safe_load(text)
    cls = getattr(optuna.pruners, PRUNERS[kind])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"pruner '{spec}': {err}") from None


def load_study(study_name: str, storage_url: str, pruner_spec_text: str | None = None):
    """The study as a job sees it: the given pruner, a sampler that never samples (the sweeper samples)."""
    import optuna

    storage = open_storage(storage_url)
    try:
        return optuna.load_study(
            study_name=study_name,
            storage=storage,
            pruner=build_pruner(pruner_spec_text),
            sampler=optuna.samplers.RandomSampler(),
        )
    except KeyError:
        raise ConfigError(
            f"search.study_name={study_name!r}: no such study in {display_storage(storage_url)}"
        ) from None


def trial_id(storage_url: str, study_name: str, number: int) -> int:
    """The storage id of trial `number` of a study (what `optuna.Trial` needs), through the storage's public API."""
    storage = open_storage(storage_url)
    try:
        return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), int(number))
    except KeyError:
        raise ConfigError(
            f"search.trial_number={number}: study '{study_name}' in {display_storage(storage_url)} has no such trial"
        ) from None
