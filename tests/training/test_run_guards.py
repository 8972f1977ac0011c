"""What stops a run early and clearly: a run directory already in use, a selection metric the loop never logs,
training that turns NaN; and a stage-cache entry that is damaged is never reused."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from ttm_experiments.errors import ConfigError, RunDirInUse
from ttm_experiments.training import stage_cache

HOLDER = """
import sys, time
from pathlib import Path
from ttm_experiments.utils.locks import try_lock
fd = try_lock(Path(sys.argv[1]) / "run", what="test", fix="-")
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_second_process_on_a_live_run_directory_is_refused_naming_the_holder(smoke, tmp_path):
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training.recipe import RunInfo, TrainRecipe

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        recipe = TrainRecipe(to_config(smoke()), RunInfo(run_dir, ""))
        with pytest.raises(RunDirInUse, match=rf"in use by process {holder.pid}.*rerun the same command to resume"):
            recipe.setup()
    finally:
        holder.kill()
        holder.wait()
    recipe = TrainRecipe(to_config(smoke()), RunInfo(run_dir, ""))  # the holder is gone: the directory is free
    recipe.setup()
    recipe.release()


def test_a_selection_metric_the_loop_never_logs_is_refused_before_any_run_starts(smoke, runs_dir):
    from ttm_experiments.cli.train import train

    with pytest.raises(ConfigError, match=r"optimized_metric=val/aurco is not logged.*acc/poor.*val/auroc"):
        train(smoke("optimized_metric=val/aurco", "experiment_name=typo"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("typo")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []


def test_weights_that_turn_nan_stop_the_stage_naming_it_and_its_rate(smoke):
    from ttm_experiments.cli.train import train
    from ttm_experiments.training.loop import NonFiniteTraining

    with pytest.raises(NonFiniteTraining, match=r"\[head\].*NaN or Inf.*learning rates are 1e\+06.*lower optim.lr"):
        train(smoke("optim.lr=1e6"))


def _stored(tmp_path):
    cache = stage_cache.StageCache(tmp_path / "cache")
    state = {"model": {"head.weight": torch.arange(64, dtype=torch.float32)}, "rng": torch.random.get_rng_state()}
    cache.store(stage_cache.Entry("ab" * 16, "head", state, [("set_tags", {"a": "b"}, False)], {"parent": "r"}))
    return cache, cache.path("ab" * 16)


def test_a_stored_entry_reads_back_as_it_was_written(tmp_path):
    cache, _ = _stored(tmp_path)
    entry = cache.read("ab" * 16, "head")
    assert torch.equal(entry.state["model"]["head.weight"], torch.arange(64, dtype=torch.float32))
    assert entry.journal == [("set_tags", {"a": "b"}, False)] and entry.source == {"parent": "r"}


def test_a_damaged_entry_is_logged_with_its_path_and_never_reused(tmp_path, caplog):
    cache, path = _stored(tmp_path)
    data = bytearray(path.read_bytes())
    weight = torch.arange(64, dtype=torch.float32).numpy().tobytes()
    at = bytes(data).find(weight[16:32])  # inside the stored head weight: the file still loads
    assert at > 0
    data[at : at + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert cache.read("ab" * 16, "head") is None
    assert f"stage cache entry {path} is damaged" in caplog.text
    with cache.claim("ab" * 16, "head") as entry:  # the run recomputes the stage and replaces the entry
        assert entry is None
    cache.store(stage_cache.Entry("ab" * 16, "head", {"model": {}}, [], {"parent": "new"}))
    assert cache.read("ab" * 16, "head").source == {"parent": "new"}


def test_a_stage_that_cannot_be_stored_on_a_full_disk_does_not_stop_the_run(smoke, runs_dir, monkeypatch):
    from ttm_experiments.cli.train import train
    from ttm_experiments.errors import StoreError

    def full(self, entry):
        raise StoreError(f"{self.path(entry.key)}: no space left on the device")

    monkeypatch.setattr(stage_cache.StageCache, "store", full)
    train(smoke("experiment_name=full-cache"))  # finishes: later runs simply train the stage again
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    (parent,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("full-cache").experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    ]
    assert parent.info.status == "FINISHED" and "no space left" in parent.data.tags["stage_cache.store_failed"]
