"""Experiment tracking through one small interface; MLflow behind it, imported lazily.

`MlflowTracker` uses `MlflowClient` with explicit run ids (no global active-run stack), so a parent run
and its nested stage runs stay correct in sweeps and in several processes. The store is checked before
any long work starts: an unreachable server fails fast, with the URI and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from ttm_experiments.errors import StoreError, TrackingError
from ttm_experiments.utils import faults
from ttm_experiments.utils.files import writable_directory

T = TypeVar("T")
log = logging.getLogger(__name__)


class Tracker(Protocol):
    """What the training loop logs through (`MlflowTracker` implements it; tests and benchmarks stub it)."""

    def start_stage(self, name: str, tags: dict[str, str]) -> str: ...
    def end_stage(self, status: str = "FINISHED") -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, str], stage: bool = False) -> None: ...
    def log_dict(self, obj: Any, artifact_file: str, stage: bool = False) -> None: ...


SPLIT_OF_CONTEXT = {"training": "train", "validation": "val", "test": "test"}  # training/inputs.py's contexts
# the MLflow UI opens an experiment without this tag in its GenAI view (traces, prompts); these runs train models
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _retry_locked(fn: Callable[[], T], attempts: int = 8) -> T:
    """SQLite stores shared by several processes answer 'database is locked' under load: wait and retry."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as err:  # mlflow wraps sqlite errors in its own exception types
            if _disk_full(err):
                raise _disk_full(err) from None
            if "locked" not in str(err).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")


# the datasets table's unique key (experiment, name, digest) as SQLite, PostgreSQL and MySQL name it when violated
# (MySQL before 8.0.19 leaves the table out: 'PRIMARY')
DATASET_KEY_CLASH = (
    "UNIQUE constraint failed: datasets.",
    '"dataset_pk"',
    "for key 'datasets.PRIMARY'",
    "for key 'PRIMARY'",
)


def _retry_dataset_clash(fn: Callable[[], T], attempts: int = 3) -> T:
    """MLflow's store looks a run's datasets up, then inserts the ones it did not find. Two runs that log the same
    dataset at the same moment (parallel jobs of one sweep on one server) can both miss it, and the slower insert
    fails on the table's unique key. The dataset is stored by then: logging again finds it and links this run."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as err:  # mlflow wraps the database's error in its own exception types (local and REST)
            if not any(k in str(err) for k in DATASET_KEY_CLASH) or i == attempts - 1:
                raise
            log.info("another run stored the same dataset at the same moment; logging this run's inputs again")
    raise AssertionError("unreachable")


def _disk_full(err: Exception) -> StoreError | None:
    """SQLite's "database or disk is full", as one line that says what to do (not a traceback)."""
    if "disk is full" not in str(err).lower():
        return None
    return StoreError(
        f"the MLflow store's disk is full ({str(err).strip().splitlines()[0][:200]}); what was logged before is "
        "kept. Fix: free space on the store's disk (or tracking.uri=<a store elsewhere>), then rerun the same "
        "command: the run resumes from its last checkpoint."
    )


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database (runs/mlartifacts), not in the working dir."""
    db = sqlite_path(uri)
    return (db.parent.resolve() / "mlartifacts").as_uri() if db is not None else None


class MlflowTracker:
    """Parent run per `ttm-train` call, one nested run per stage; metrics go to both."""

    def __init__(
        self,
        uri: str,
        experiment_name: str,
        *,
        log_system_metrics: bool = False,
        system_metrics_interval_s: float = 10.0,
    ):
        self.uri = uri
        self.experiment_name = experiment_name
        self.client, self.experiment_id = self._connect()
        self.run_id: str | None = None
        self.stage_run_id: str | None = None
        self.resumed = False  # attach() continues runs of a stopped process
        self.log_system_metrics = log_system_metrics  # tracking.log_system_metrics: system/* on the parent run
        self.system_metrics_interval_s = system_metrics_interval_s
        self._monitor = None
        self.last_stage_run_id: str | None = None  # the stage run opened last (still set after it ended)
        self.journal: list[tuple] | None = None  # while a cached stage runs: its calls, to replay on reuse
        self.datasets: dict[str, tuple[str, str]] = {}  # split -> (dataset name, digest), from log_inputs

    @classmethod
    def for_run(cls, tracking: Any, experiment_name: str) -> MlflowTracker:
        """The tracker of a training run: `tracking` is its `TrackingConf` (uri, system metrics and their interval)."""
        return cls(
            tracking.uri,
            experiment_name,
            log_system_metrics=tracking.log_system_metrics,
            system_metrics_interval_s=tracking.system_metrics_interval_s,
        )

    def _note(self, *call: Any) -> None:
        if self.journal is not None:
            self.journal.append(call)

    def replay(self, journal: list[tuple], stage_tags: dict[str, str]) -> None:
        """Make a stage's MLflow record again from its journal (stage cache): the same stage run (with
        `stage_tags` added), tags, artifacts and metrics at the same steps, in this run."""
        for name, *args in journal:
            if name == "start_stage":
                self.start_stage(args[0], {**args[1], **stage_tags})
            else:
                getattr(self, name)(*args)

    def _connect(self):
        """The client and experiment id; a SQLite store is created (or checked) under a lock beside it."""
        db = sqlite_path(self.uri)
        if db is None:
            if self.uri.startswith(("http://", "https://")):
                # fail in seconds, not after MLflow's default minutes of retries
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            return self._open(db)
        writable_directory(
            db.parent,
            what=f"tracking.uri={self.uri}",
            error=TrackingError,
            fix="paths.runs_dir=<a writable directory>. Nothing was trained.",
        )
        from ttm_experiments.tracking.stores import mlflow_sqlite_problem
        from ttm_experiments.utils.locks import file_lock

        # one process at a time creates or migrates the store: concurrent first use leaves it half-migrated
        with file_lock(
            db,
            what=f"tracking.uri={self.uri}",
            fix="a tracking server (tracking.uri=http://<host>:"
            "5000, `mlflow server` on a local disk or PostgreSQL) or a store on a local disk",
        ):
            problem = mlflow_sqlite_problem(db)
            if problem:
                raise StoreError(
                    f"tracking.uri={self.uri}: the MLflow store {db} {problem} Nothing in it was changed. Fix: move "
                    f"it aside (mv {db} {db}.broken) and rerun to start a new store; the old file stays readable "
                    "with sqlite3. Nothing was trained."
                )
            return self._open(db)

    def _open(self, db: Path | None):
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(tracking_uri=self.uri)
            experiment = _retry_locked(lambda: client.get_experiment_by_name(self.experiment_name))
            if experiment is None:
                try:
                    experiment_id = _retry_locked(
                        lambda: client.create_experiment(
                            self.experiment_name, artifact_location=artifact_root(self.uri), tags=EXPERIMENT_KIND
                        )
                    )
                except Exception:  # another process created it first
                    experiment = client.get_experiment_by_name(self.experiment_name)
                    if experiment is None:
                        raise
                    experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
                if not all(experiment.tags.get(k) for k in EXPERIMENT_KIND):  # made by another tool, or before
                    _retry_locked(
                        lambda: [client.set_experiment_tag(experiment_id, *kv) for kv in EXPERIMENT_KIND.items()]
                    )
        except Exception as err:
            if _disk_full(err):
                raise _disk_full(err) from None
            first_line = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            if db is not None:  # the directory is writable (checked): the file itself is the problem
                raise StoreError(
                    f"tracking.uri={self.uri}: the MLflow store {db} cannot be opened: {first_line}. Nothing was "
                    f"trained. Fix: if it is damaged or not an MLflow store, move it aside (mv {db} {db}.broken) and "
                    "rerun; if it is busy, retry."
                ) from None
            raise TrackingError(
                f"tracking.uri={self.uri} cannot be reached: {first_line}. Fix: start the tracking server, correct "
                "tracking.uri, or use the local store (tracking.uri=sqlite:///runs/mlflow.db). Nothing was trained."
            ) from None
        return client, experiment_id

    def start_run(self, run_name: str | None, tags: dict[str, str]) -> str:
        run = _retry_locked(lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=tags))
        self.run_id = run.info.run_id
        self._start_monitor(resume=False)
        return self.run_id

    def _start_monitor(self, *, resume: bool) -> None:
        """MLflow's system metrics (CPU, memory, disk, network, GPU when present: `system/*`) on the parent run:
        one sample now, one every `system_metrics_interval_s` seconds from a daemon thread, one when the run ends
        (`end_run`), so a run shorter than the interval still records its start and end. A resumed run continues
        the step count of the stopped process's samples."""
        if not self.log_system_metrics or self._monitor is not None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, resume_logging=resume, tracking_uri=self.uri)
        # the config decides (MLflow would let MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL override the argument)
        monitor.sampling_interval = self.system_metrics_interval_s
        self._sample_system_metrics(monitor)
        monitor.start()
        self._monitor = monitor

    def _sample_system_metrics(self, monitor: Any) -> None:
        """One sample of every system metric, written at the monitor's next step before returning."""
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        _retry_locked(monitor.mlflow_logger.flush)

    def attach(self, run_id: str, stage_run_id: str | None) -> None:
        """Continue existing runs (resume): mark them RUNNING again instead of creating new ones."""
        self.run_id, self.stage_run_id = run_id, stage_run_id
        self.resumed = True
        for rid in filter(None, (run_id, stage_run_id)):
            _retry_locked(lambda rid=rid: self.client.update_run(rid, status="RUNNING"))
        inputs = _retry_locked(lambda: self.client.get_run(run_id)).inputs
        self.remember_datasets(inputs.dataset_inputs if inputs else [])
        self._start_monitor(resume=True)

    def _unfinished_stage(self, name: str) -> str | None:
        """A resumed run's stage run `name` left by the stopped process before its first epoch ended, if any."""
        if not self.resumed:
            return None
        query = (
            f"tags.mlflow.parentRunId = '{self.run_id}' and tags.stage = '{name}' and attributes.status != 'FINISHED'"
        )
        found = _retry_locked(lambda: self.client.search_runs([self.experiment_id], query, max_results=1))
        return found[0].info.run_id if found else None

    def move_tags(self, keys: tuple[str, ...], to: str, run_id: str) -> None:
        """Delete the tags `keys` of run `run_id`; their values, if any, become tag `to` (`key=value; ...`)."""
        tags = _retry_locked(lambda: self.client.get_run(run_id)).data.tags
        found = {k: tags[k] for k in keys if k in tags}
        if not found:
            return
        for key in found:
            _retry_locked(lambda key=key: self.client.delete_tag(run_id, key))
        text = "; ".join(f"{k}={v}" for k, v in found.items())[:4000]
        _retry_locked(lambda: self.client.set_tag(run_id, to, text))

    def has_metric_step(self, key: str, step: int, run_id: str | None = None) -> bool:
        """Has run `run_id` (default: the parent) logged `key` at `step`?"""
        history = _retry_locked(lambda: self.client.get_metric_history(run_id or self.run_id, key))
        return any(m.step == step for m in history)

    def start_stage(self, name: str, tags: dict[str, str]) -> str:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        self._note("start_stage", name, tags)
        tags = {**tags, MLFLOW_PARENT_RUN_ID: self.run_id, "stage": name}
        earlier = self._unfinished_stage(name)
        if earlier is not None:  # continue it rather than leave a second, empty stage run behind
            self.attach(self.run_id, earlier)
            self.set_tags(tags, stage=True)
            self.last_stage_run_id = earlier
            return earlier
        run = _retry_locked(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags))
        self.stage_run_id = self.last_stage_run_id = run.info.run_id
        return self.stage_run_id

    def end_stage(self, status: str = "FINISHED") -> None:
        self._note("end_stage", status)
        if self.stage_run_id is not None:
            stage_id = self.stage_run_id
            _retry_locked(lambda: self.client.set_terminated(stage_id, status=status))
            self.stage_run_id = None

    def log_metrics(
        self,
        metrics: dict[str, float],
        step: int,
        run_ids: tuple[str, ...] | None = None,
        *,
        model_id: str | None = None,
        split: str | None = None,
    ) -> None:
        """To the parent and the open stage run (or only to `run_ids`); with `model_id`, they are also the metrics of
        that logged model, measured on the run's `split` dataset (train, val, test: its name and digest)."""
        from mlflow.entities import Metric

        if run_ids is None:
            self._note("log_metrics", metrics, step)
        now = int(time.time() * 1000)
        name, digest = self.datasets.get(split, (None, None)) if split else (None, None)
        batch = [Metric(k, float(v), now, step, model_id, name, digest) for k, v in metrics.items()]
        for run_id in filter(None, run_ids if run_ids is not None else (self.run_id, self.stage_run_id)):
            # a resumed run redoes what followed its last state (a stage's probe, the test): no step logged twice
            if self.resumed and metrics and self.has_metric_step(next(iter(metrics)), step, run_id=run_id):
                continue
            _retry_locked(lambda run_id=run_id: self.client.log_batch(run_id, metrics=batch))
            faults.point("mlflow.log")  # chaos test: after each batch (the parent's: the stage run's not yet)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            chunk = items[i : i + 100]
            _retry_locked(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))

    def set_tags(self, tags: dict[str, str], stage: bool = False) -> None:
        from mlflow.entities import RunTag

        self._note("set_tags", tags, stage)
        run_id = self.stage_run_id if stage else self.run_id
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        _retry_locked(lambda: self.client.log_batch(run_id, tags=batch))

    def log_dict(self, obj: Any, artifact_file: str, stage: bool = False) -> None:
        self._note("log_dict", obj, artifact_file, stage)
        run_id = self.stage_run_id if stage else self.run_id
        _retry_locked(lambda: self.client.log_dict(run_id, obj, artifact_file))

    def log_inputs(self, datasets: list) -> None:
        """MLflow dataset inputs (`mlflow.entities.DatasetInput`) of the parent run: the Dataset column. Each is
        remembered by its split (its context tag), so that a logged model's metrics can name the dataset."""
        self.remember_datasets(datasets)
        _retry_dataset_clash(lambda: _retry_locked(lambda: self.client.log_inputs(self.run_id, datasets=datasets)))

    def remember_datasets(self, datasets: list) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        for ds_input in datasets:
            context = next((t.value for t in ds_input.tags if t.key == MLFLOW_DATASET_CONTEXT), None)
            if context in SPLIT_OF_CONTEXT:
                self.datasets[SPLIT_OF_CONTEXT[context]] = (ds_input.dataset.name, ds_input.dataset.digest)

    def log_text(self, text: str, artifact_file: str) -> None:
        _retry_locked(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        _retry_locked(lambda: self.client.log_figure(self.run_id, figure, artifact_file))

    def log_artifact(self, path: Path) -> None:
        _retry_locked(lambda: self.client.log_artifact(self.run_id, str(path)))

    def end_run(self, status: str = "FINISHED") -> None:
        self.end_stage(status)
        monitor, self._monitor = self._monitor, None
        if monitor is not None:  # the thread's samples, then a last one, are written before the run ends
            monitor.finish()
            try:
                self._sample_system_metrics(monitor)
            except Exception as err:  # a system sample (NVML, a full store) must not keep the run RUNNING
                log.warning("the last system-metrics sample of run %s was not logged: %s", self.run_id, err)
        if self.run_id is not None:
            run_id = self.run_id
            _retry_locked(lambda: self.client.set_terminated(run_id, status=status))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become JSON strings (MLflow params are flat strings)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out
