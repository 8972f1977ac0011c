"""Stages shared across runs: a stage's end state stored content-addressed, reused by every run that would
compute it again (`trainer.stage_cache`, on by default; entries in `paths.stage_cache_dir`).

A grid over `unfreeze.last_n` x `optim.lr` with `schedule=hybrid` recomputes the same self-supervised stages
in every job; with the cache the first job computes them and the others start after them. The key of stage k
hashes everything its end state depends on: the code that trains (the package's training, model, data and
config sources and the library versions), the data (a digest of the train and validation windows, and of the
pretraining corpus), the backbone and its initial weights (a digest of a local checkpoint, the hub commit), the
seed, the device and thread count, and the settings of stages 0..k (their rates, epochs and, for supervised
stages, every `optim.*`, `unfreeze.*`, `trainer.*` setting and the selection metric that affect them). An entry
holds what the next stage needs (weights, results so far, best checkpoint, every random generator, the loss
scale) and the stage's MLflow record (every call the stage made: tags, metrics, artifacts), replayed onto a
reusing run's own stage run, which is tagged `stage_cache=reused` with the run that computed it.

Concurrency: a job takes a lock on an entry (`<entry>.lock`, flock, also on NFS with lockd) before it looks
for it, so jobs that need the same stage compute it once; the others wait and read it. Entries are written
atomically (temporary file, then rename) with the SHA-256 of their payload; one that cannot be read, does not
match its SHA-256, or has another format, key or code version is logged with its path, recomputed and replaced,
never trusted. The last stage of a schedule is not stored (no run starts after it).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import pickle
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import torch

from ttm_experiments.config.schema import OptimConf, TrainConfig
from ttm_experiments.data.prepare import Splits
from ttm_experiments.errors import ConfigError
from ttm_experiments.training.inputs import windows_digest
from ttm_experiments.training.stages import StagePlan
from ttm_experiments.utils import faults
from ttm_experiments.utils.files import atomic_file, remove_stale_temporaries, writable_directory
from ttm_experiments.utils.locks import file_lock

log = logging.getLogger(__name__)

FORMAT = "ttm-experiments-stage-cache/2"  # /2: the payload with its SHA-256
# the sources whose code decides a stage's end state (reports, CLIs, the sweeper and serving do not)
CODE = ("config", "data", "models", "training", "metrics", "utils/files.py")
# the libraries that compute a stored stage or probe feature (numba compiles the dropout masks:
# models/dropout_kernels.py; Mantis and Chronos-Bolt networks run in their own packages)
LIBRARIES = (
    "torch",
    "numpy",
    "numba",
    "granite-tsfm",
    "transformers",
    "scikit-learn",
    "scipy",
    "mantis-tsfm",
    "chronos-forecasting",
)
# what torch.load raises on a truncated or foreign file
UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """SHA-256 (16 hex) of the package sources in CODE and the versions of the libraries that compute."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for part in CODE:
        for path in sorted((root / part).rglob("*.py")) if (root / part).is_dir() else [root / part]:
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    for lib in LIBRARIES:
        h.update(f"{lib}={metadata.version(lib)}\0".encode())
    return h.hexdigest()[:16]


def digest(obj: Any) -> str:
    """SHA-256 (32 hex) of a JSON-able description (dataclasses and enums included)."""
    payload = json.dumps(obj, sort_keys=True, default=_plain).encode()
    return hashlib.sha256(payload).hexdigest()[:32]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return getattr(value, "value", str(value))  # enums by value, paths and the rest as text


def weights_digest(path: str | None) -> str | None:
    """A digest of a local checkpoint (a file, or every file of a directory); None for a hub id or no path."""
    if not path:
        return None
    p = Path(path).expanduser()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
    if not files:
        return None  # a hub id: its commit hash (in the run's init) identifies the weights
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if f != p else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def stage_keys(inputs: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
    """Key of each stage: the run's inputs and the settings of that stage and every stage before it."""
    return [
        digest({"format": FORMAT, "code": code_version(), "inputs": inputs, "stages": stages[: i + 1]})
        for i in range(len(stages))
    ]


@dataclass
class Entry:
    """A stored stage: the state the next stage starts from, its MLflow record, and who computed it."""

    key: str
    stage: str
    state: dict[str, Any]
    journal: list[tuple]
    source: dict[str, str | None]  # experiment id, parent run id, stage run id of the computing run


class StageCache:
    """Entries under `root` (`<root>/<key[:2]>/<key>.pt`); checked writable when opened."""

    def __init__(self, root: Path):
        self.root = Path(root)
        writable_directory(
            self.root,
            what=f"paths.stage_cache_dir={self.root}",
            error=ConfigError,
            fix="paths.stage_cache_dir=<a writable directory>, or trainer.stage_cache=false (every stage trains).",
        )
        for bucket in self.root.glob("??"):  # temporaries of writers killed mid-store (none held by a live one)
            remove_stale_temporaries(bucket)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    @contextmanager
    def claim(self, key: str, stage: str) -> Iterator[Entry | None]:
        """Hold the entry's lock; yields the stored entry, or None: then compute the stage and `store` it."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(
            path,
            what=f"stage cache entry {path}",
            wait_s=math.inf,
            holding=f"computes stage {stage!r}",
            fix="trainer.stage_cache=false, or paths.stage_cache_dir on a filesystem with locks",
        ):
            yield self.read(key, stage)

    def read(self, key: str, stage: str) -> Entry | None:
        """The stored entry, verified: its payload's SHA-256 must equal the one written beside it, so a damaged
        file (a flipped byte in a weight, a truncated RNG state) is never trusted: it is logged with its path
        and None is returned (the caller recomputes the stage and replaces the entry)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)  # our own pickle (see resume.py)
        except UNREADABLE as err:
            return self._untrusted(path, f"cannot be read ({type(err).__name__}: {err})")
        if not isinstance(data, dict) or data.get("format") != FORMAT or not torch.is_tensor(data.get("payload")):
            return self._untrusted(path, "is not a stage cache entry of this version")
        if data.get("key") != key or data.get("code") != code_version() or data.get("stage") != stage:
            return self._untrusted(path, f"was written for another key, code version or stage ({data.get('stage')!r})")
        raw = data["payload"].numpy().tobytes()
        if hashlib.sha256(raw).hexdigest() != data.get("sha256"):
            return self._untrusted(path, "is damaged (its payload does not match the SHA-256 stored with it)")
        try:
            payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
        except UNREADABLE as err:
            return self._untrusted(path, f"has a payload that cannot be read ({type(err).__name__}: {err})")
        return Entry(key, stage, payload["state"], payload["journal"], payload["source"])

    @staticmethod
    def _untrusted(path: Path, why: str) -> None:
        log.warning("stage cache entry %s %s: the stage is recomputed and the entry replaced", path, why)
        return None

    def store(self, entry: Entry) -> None:
        """Write atomically (the caller holds the entry's lock): a kill leaves the old entry or none."""
        path = self.path(entry.key)
        buffer = io.BytesIO()
        torch.save({"state": entry.state, "journal": entry.journal, "source": entry.source}, buffer)
        payload = buffer.getvalue()
        header = {"format": FORMAT, "key": entry.key, "code": code_version(), "stage": entry.stage}
        with atomic_file(path) as tmp:
            # the payload as raw bytes (a uint8 tensor: stored as is, not re-encoded by pickle)
            raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            torch.save({**header, "sha256": hashlib.sha256(payload).hexdigest(), "payload": raw}, tmp)
            faults.point("stage_cache.write")  # chaos test: the temporary file written, not renamed
        log.info("[%s] stored in the stage cache: %s", entry.stage, path)


# -- what a run feeds the cache ---------------------------------------------------------------------------------------
SSL_OPTIM = ("weight_decay", "batch_size", "eval_batch_size", "warmup_frac", "grad_clip")  # what SSL stages read


def run_inputs(
    c: TrainConfig, splits: Splits, *, pretrain_digest: str | None, init_tags: dict[str, str], device: torch.device
) -> dict:
    """What every stage's end state depends on besides the stages' settings."""
    return {
        "data": {name: windows_digest(split) for name, split in (("train", splits.train), ("val", splits.val))},
        "classes": list(splits.train.class_names),
        "pretrain": pretrain_digest,
        "dataset": c.dataset,
        "backbone": c.backbone,
        "init": init_tags,
        "weights": weights_digest(c.backbone.pretrained_path),
        "seed": c.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def stage_settings(c: TrainConfig, optim: OptimConf, stage: StagePlan) -> dict:
    """A stage's own settings: its plan, and the `optim` (as the run adjusted it), `trainer`, `unfreeze` keys its
    loop reads."""
    t = c.trainer
    plan = {
        "conf": stage.conf,
        "epochs": stage.epochs,
        "head_lr": stage.head_lr,
        "backbone_lr": stage.backbone_lr,
        "amp": t.amp,
        "compile": t.compile,
        "max_batches": t.max_batches,
    }
    if not stage.supervised:  # the SSL loop and its linear probe
        return {**plan, "optim": {k: getattr(optim, k) for k in SSL_OPTIM}}
    return {
        **plan,
        "optim": optim,
        "unfreeze": c.unfreeze,
        "selection": c.optimized_metric,
        "collapse": [t.collapse_threshold, t.collapse_action],
        "early_stopping_patience": t.early_stopping_patience,
    }


@dataclass
class RunStages:
    """The stage cache as one run sees it: the key of every stage but the last (none is started after it), and
    which stages this run reused or computed. `entries` is None when the cache is off or there is one stage."""

    entries: StageCache | None = None
    keys: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, root: Path | None, stages: list[StagePlan], *, inputs: dict, settings: list[dict]) -> RunStages:
        """`root` None: `trainer.stage_cache=false`."""
        if root is None or len(stages) < 2:
            return cls()
        run = cls(StageCache(root), stage_keys(inputs, settings)[:-1])
        stored = [s.name for s, key in zip(stages, run.keys) if run.entries.exists(key)]
        log.info(
            "stage cache %s: %s",
            root,
            f"stages stored by earlier runs: {', '.join(stored)}" if stored else "no stage of this run stored yet",
        )
        return run

    def key(self, index: int) -> str | None:
        """The key of stage `index`, None when it is not cached (the last stage, or the cache off)."""
        return self.keys[index] if index < len(self.keys) else None

    def tags(self) -> dict[str, str]:
        return {
            "stage_cache.reused": ",".join(self.reused) or "none",
            "stage_cache.computed": ",".join(self.computed) or "none",
        }

    def plan(self, stages: list[StagePlan], *, enabled: bool) -> list[str]:
        """Per stage whether the cache holds it now, and who computed it (`ttm-train --cfg job`)."""
        if self.entries is None:
            return [f"stage cache: {'one stage: nothing to share' if enabled else 'off (trainer.stage_cache=false)'}"]
        lines = [f"stage cache {self.entries.root}:"]
        for stage, key in zip(stages, self.keys):
            entry = self.entries.read(key, stage.name)
            found = (
                f"stored, would be REUSED (computed by run {entry.source['parent']})"
                if entry is not None
                else "not stored, would be trained and stored"
            )
            lines.append(f"  {stage.name}: {found}")
        lines.append(f"  {stages[-1].name}: trained (the last stage is not stored)")
        return lines
