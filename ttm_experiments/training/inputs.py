"""The run's data as MLflow datasets: one input per split (train, val, test), so the runs table's Dataset
column and its filter work.

Each has a name (`synthetic fold 0 train`), a source (the dataset root, or the synthetic generator with its
split seed), a digest of the windows and labels themselves, a profile (shapes, sizes) and tags with the split's
size, subjects and class counts. MLflow's own digest hashes only the first 10,000 values after copying the
whole array (`array.flatten()`): two folds could share it, and a memory-mapped corpus would be read into memory.
`windows_digest` hashes every window, a chunk of rows at a time, so the digest is the data's and nothing is
copied whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ttm_experiments.data.base import WindowSet
from ttm_experiments.data.prepare import Splits, describe_splits

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
CHUNK_BYTES = 64 << 20  # rows hashed at a time: bounded memory for a memory-mapped split


def windows_digest(split: WindowSet) -> str:
    """SHA-256 over the windows (shape, dtype, values in row order) and the labels: 16 hex characters."""
    h = hashlib.sha256()
    signals = split.signals
    h.update(f"{signals.shape}|{signals.dtype.str}|{split.labels.dtype.str}".encode())
    rows = max(1, CHUNK_BYTES // max(1, signals[:1].nbytes))
    for start in range(0, len(signals), rows):
        h.update(np.ascontiguousarray(signals[start : start + rows]).tobytes())
    h.update(np.ascontiguousarray(split.labels).tobytes())
    return h.hexdigest()[:16]


def dataset_source(name: str, root: str | None, split_seed: int):
    """Where the windows came from: the dataset's directory, or the synthetic generator and its seed."""
    if root:
        # the local-file source class is generated at import by MLflow's registry: resolve it, don't import it
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        return resolve_dataset_source(str(Path(root).expanduser().resolve()))
    from mlflow.data.code_dataset_source import CodeDatasetSource

    return CodeDatasetSource({"generator": "ttm_experiments.data.synthetic", "split_seed": str(split_seed)})


def split_inputs(splits: Splits, *, dataset: str, fold: int, root: str | None, split_seed: int) -> list:
    """One `mlflow.entities.DatasetInput` per split, with its context and the split's counts as tags
    (`windows`, `subjects`, `n_<class>`, `frac_<class>`: what `data/splits.json` holds)."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = dataset_source(dataset, root, split_seed)
    described = describe_splits(splits)
    inputs = []
    for split_name, split in splits.items():
        # from_numpy keeps a reference to the arrays (no copy); its profile holds shapes and sizes
        ds = mlflow.data.from_numpy(
            split.signals,
            source=source,
            targets=split.labels,
            name=f"{dataset} fold {fold} {split_name}",
            digest=windows_digest(split),
        )
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, CONTEXTS.get(split_name, split_name))]
        tags += [InputTag(k, str(v)) for k, v in described[split_name].items()]
        inputs.append(DatasetInput(ds._to_mlflow_entity(), tags=tags))  # what mlflow.log_input sends
    return inputs
