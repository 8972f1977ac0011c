"""Where `backbone.pretrained_path` points: a checkpoint file of this suite, a local Hugging Face directory, or a
hub id (`org/name`, at `backbone.revision`) fetched through `huggingface_hub` and its cache.

The cache (`HF_HOME`) is what makes a run reproducible offline: `hf download <id> --revision <rev>` once, then
`HF_HUB_OFFLINE=1`. The package never sets `HF_HUB_OFFLINE` itself; the Makefile, CI and the tests do.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ttm_experiments.errors import CheckpointError

log = logging.getLogger(__name__)

# what a Hugging Face model directory needs for the encoder; nothing else of a repository is downloaded
HUB_FILES = ["config.json", "*.safetensors", "pytorch_model.bin"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class PretrainedSource:
    """A resolved `backbone.pretrained_path`: `kind` is `suite` (a ttm-train checkpoint file) or `hf` (a
    directory with config.json); `source` is what the run records (`<id>@<revision>` or the path); `commit` is the
    hub snapshot's commit hash (None for local paths)."""

    kind: str
    path: Path
    source: str
    commit: str | None = None

    def hf_config(self) -> dict | None:
        """The checkpoint's config.json (None for a suite checkpoint, whose architecture is inside the file)."""
        if self.kind != "hf":
            return None
        return read_hf_config(self.path, self.source)


def read_hf_config(path: Path, source: str) -> dict:
    """A Hugging Face model directory's config.json (`source`: how the user named it, for the message)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"backbone.pretrained_path={source} is a directory without config.json. Fix: point it at a Hugging Face "
            "model directory (config.json + model.safetensors) or a checkpoint file written by ttm-train."
        )
    try:
        return json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"backbone.pretrained_path={source}: {config_file} is not valid JSON ({err}). Fix: download the model "
            "again (delete its folder from the Hugging Face cache) or point at an intact copy."
        ) from None


def resolve_pretrained(pretrained_path: str, revision: str | None) -> PretrainedSource:
    """A local file or directory as it is; otherwise a hub id, downloaded or read from the cache."""
    path = Path(pretrained_path).expanduser()
    if path.exists():
        if revision is not None:
            raise CheckpointError(
                f"backbone.revision={revision!r} applies to hub ids only, but backbone.pretrained_path="
                f"{pretrained_path} is a local path. Fix: backbone.revision=null."
            )
        return PretrainedSource("hf" if path.is_dir() else "suite", path, str(path))
    if pretrained_path.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(pretrained_path):
        raise CheckpointError(
            f"backbone.pretrained_path={pretrained_path} does not exist. Fix: give a checkpoint file written by "
            "ttm-train (runs/.../best.pt), a local model directory, a hub id such as "
            "ibm-granite/granite-timeseries-ttm-r2, or backbone.pretrained_path=null."
        )
    return _snapshot(pretrained_path, revision or "main")


def _snapshot(repo_id: str, revision: str) -> PretrainedSource:
    """`snapshot_download` of the encoder's files (cache first; offline when HF_HUB_OFFLINE=1)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    fetch = f"hf download {repo_id} --revision {revision}"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except RevisionNotFoundError:
        raise CheckpointError(
            f"backbone.revision={revision!r} does not exist in {repo_id}. Fix: a branch, tag or commit of the "
            "repository (its 'Files and versions' page lists the branches), e.g. backbone.revision=1024-96-r2."
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"backbone.pretrained_path={repo_id} is neither a local path nor a model on the hub (or it is private). "
            "Fix: check the id, or `hf auth login` for a private model."
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise CheckpointError(
            f"{repo_id} at revision {revision!r} is not in the Hugging Face cache and cannot be downloaded now "
            f"({type(err).__name__}). Fix: `{fetch}` on a machine with network (HF_HOME decides the cache), then run "
            "again; with HF_HUB_OFFLINE=1 the cached snapshot is used."
        ) from None
    except HfHubHTTPError as err:
        raise CheckpointError(f"downloading {repo_id}@{revision} failed: {err}. Fix: retry, or `{fetch}`.") from None
    commit = folder.name  # snapshots/<commit hash>/, as huggingface_hub lays out its cache
    log.info("backbone weights: %s@%s, snapshot %s (%s)", repo_id, revision, commit, folder)
    return PretrainedSource("hf", folder, f"{repo_id}@{revision}", commit)
