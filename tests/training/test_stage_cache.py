"""The stage cache (trainer.stage_cache): runs that share leading stages compute them once, and a run that
reuses them ends exactly where an uncached run ends, with the same MLflow history."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from ttm_experiments.cli.train import train
from ttm_experiments.errors import ConfigError
from ttm_experiments.training.stage_cache import FORMAT, StageCache

# the thread count is part of a stage's key (it can change float sums): fixed, so that runs in this process
# and the `--cfg job` subprocess agree whatever earlier tests set torch's thread count to
HYBRID = ("schedule=hybrid", "trainer.max_epochs_per_stage=2", "trainer.num_threads=1")


def _runs(runs_dir: Path, experiment: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], order_by=["start_time"])
    return client, found


def _parents(found):
    return [r for r in found if "mlflow.parentRunId" not in r.data.tags]


def _children(found, parent):
    return {r.data.tags["stage"]: r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}


def _history(client, run) -> dict[str, list[tuple[int, float]]]:
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics
    }


def _entries(runs_dir: Path) -> list[Path]:
    return sorted((runs_dir / "stage_cache").glob("*/*.pt"))


def test_a_reused_prefix_gives_the_same_metrics_and_history_to_the_last_digit(smoke, runs_dir):
    train(smoke(*HYBRID, "trainer.stage_cache=false", "experiment_name=off"))  # the reference
    assert not _entries(runs_dir)
    train(smoke(*HYBRID, "experiment_name=on"))  # computes and stores every stage but the last
    assert len(_entries(runs_dir)) == 4
    train(smoke(*HYBRID, "experiment_name=on"))  # reuses them
    client, off = _runs(runs_dir, "off")
    _, on = _runs(runs_dir, "on")
    (ref,), (first, second) = _parents(off), _parents(on)
    assert second.data.tags["stage_cache.reused"] == "pretrain,target_ssl,head,partial"
    assert first.data.tags["stage_cache.computed"] == "pretrain,target_ssl,head,partial"
    assert first.data.tags["stage_cache.reused"] == "none"
    for run in (first, second):
        assert run.data.metrics == ref.data.metrics  # test/*, best/* and the last epoch's values: exact
        assert _history(client, run) == _history(client, ref)  # every metric at every step, no gap, no duplicate
    stages, ref_stages = _children(on, second), _children(off, ref)
    assert set(stages) == set(ref_stages) == {"pretrain", "target_ssl", "head", "partial", "full"}
    for name, stage in stages.items():
        assert _history(client, stage) == _history(client, ref_stages[name]), name
        assert stage.info.status == "FINISHED"
        if name == "full":
            assert "stage_cache" not in stage.data.tags
            continue
        assert stage.data.tags["stage_cache"] == "reused"
        assert stage.data.tags["stage_cache.source_run"] == first.info.run_id
        assert stage.data.tags["stage_cache.source_stage_run"] == _children(on, first)[name].info.run_id
    assert stages["head"].data.tags["scope"] == "head"  # the stage run's own tags are replayed too
    out = Path(second.data.tags["output_dir"])
    assert {p.name for p in out.glob("stage-*.pt")} == {f"stage-{s}.pt" for s in stages}
    for name in stages:  # the stage checkpoints hold the same weights
        a = torch.load(out / f"stage-{name}.pt", weights_only=False)
        b = torch.load(Path(ref.data.tags["output_dir"]) / f"stage-{name}.pt", weights_only=False)
        for part in ("backbone", "head"):
            assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (name, part)


def test_a_fine_tuning_grid_shares_the_ssl_stages_and_nothing_else(smoke, runs_dir):
    train(smoke(*HYBRID, "optim.lr=1e-3", "unfreeze.last_n=1", "experiment_name=grid"))
    train(smoke(*HYBRID, "optim.lr=3e-4", "unfreeze.last_n=2", "experiment_name=grid"))
    train(smoke(*HYBRID, "optim.ssl_lr=3e-4", "experiment_name=grid"))  # another SSL rate: nothing shared
    _, found = _runs(runs_dir, "grid")
    first, second, third = _parents(found)
    assert first.data.tags["stage_cache.reused"] == "none"
    assert second.data.tags["stage_cache.reused"] == "pretrain,target_ssl"
    assert second.data.tags["stage_cache.computed"] == "head,partial"
    assert third.data.tags["stage_cache.reused"] == "none"
    stages = _children(found, second)
    assert stages["pretrain"].data.params == {} and stages["pretrain"].data.tags["stage_cache"] == "reused"
    # `ttm-train --cfg job` says what a next job of the grid would reuse
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "ttm_experiments.cli.train",
            "debug=tiny",
            *HYBRID,
            "optim.lr=1e-4",
            f"paths.runs_dir={runs_dir}",
            "--cfg",
            "job",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    plan = shown.stdout.split("# stage cache", 1)[1]
    assert f"pretrain: stored, would be REUSED (computed by run {first.info.run_id})" in plan
    assert f"target_ssl: stored, would be REUSED (computed by run {first.info.run_id})" in plan
    assert "head: not stored, would be trained and stored" in plan


def test_the_ssl_rate_does_not_follow_optim_lr(smoke):
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training.stages import plan_stages

    c = to_config(smoke("schedule=hybrid", "optim.lr=3e-4", "optim.ssl_lr=2e-3"))
    plans = {p.name: p for p in plan_stages(c.schedule, lr=c.optim.lr, ssl_lr=c.optim.ssl_lr, max_epochs=0)}
    assert plans["pretrain"].backbone_lr == pytest.approx(2e-3)
    assert plans["target_ssl"].backbone_lr == pytest.approx(2e-3 * 0.5)
    assert plans["head"].head_lr == pytest.approx(3e-4)


def test_off_stores_nothing_and_a_single_stage_schedule_needs_no_cache(smoke, runs_dir):
    train(smoke("schedule=full", "experiment_name=single"))
    assert not _entries(runs_dir)
    _, found = _runs(runs_dir, "single")
    assert "stage_cache.reused" not in _parents(found)[0].data.tags


@pytest.mark.parametrize("damage", ["truncate", "foreign"])
def test_a_broken_or_foreign_entry_is_recomputed_and_replaced(smoke, runs_dir, damage, caplog):
    train(smoke(*HYBRID, "experiment_name=a"))
    victim = next(p for p in _entries(runs_dir) if torch.load(p, weights_only=False)["stage"] == "target_ssl")
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:200])
    else:
        data = torch.load(victim, weights_only=False)
        torch.save({**data, "code": "another-version"}, victim)
    caplog.set_level("WARNING")
    train(smoke(*HYBRID, "experiment_name=b"))
    assert f"stage cache entry {victim}" in caplog.text and "recomputed and the entry replaced" in caplog.text
    _, found = _runs(runs_dir, "b")
    (run,) = _parents(found)
    assert run.data.tags["stage_cache.computed"] == "target_ssl"  # the broken one was recomputed
    assert run.data.tags["stage_cache.reused"] == "pretrain,head,partial"  # the others are still good
    assert torch.load(victim, weights_only=False)["format"] == FORMAT  # and replaced by a good entry
    _, ref = _runs(runs_dir, "a")
    assert run.data.metrics == _parents(ref)[0].data.metrics


def test_an_unwritable_cache_dir_is_refused_before_training(smoke, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"paths.stage_cache_dir=.*trainer.stage_cache=false"):
        train(smoke(*HYBRID, f"paths.stage_cache_dir={blocker}/cache"))


def test_two_jobs_needing_one_entry_compute_it_once(tmp_path, monkeypatch):
    """The second claimant waits for the first, then reads what it stored (threads stand in for processes:
    flock locks are per open file description, so two opens in one process exclude each other too)."""
    from ttm_experiments.training.stage_cache import Entry
    from ttm_experiments.utils import locks

    cache = StageCache(tmp_path / "sc")
    order: list[str] = []
    computing, second_waits = threading.Event(), threading.Event()

    def sleep(seconds):  # the lock's wait loop: the second job found the entry locked
        second_waits.set()
        time.sleep(seconds)

    monkeypatch.setattr(locks, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))

    def first():
        with cache.claim("ab" * 16, "pretrain") as entry:
            assert entry is None
            order.append("first computes")
            computing.set()
            if not second_waits.wait(60):  # store only once the second job waits for the lock
                order.append("the second job never waited")
            cache.store(Entry("ab" * 16, "pretrain", {"x": 1}, [], {"parent": "p", "stage": "s", "experiment": "0"}))
            order.append("first stored")

    def second(result):
        with cache.claim("ab" * 16, "pretrain") as entry:
            order.append("second reads")
            result.append(entry)

    got: list = []
    t1 = threading.Thread(target=first)
    t1.start()
    assert computing.wait(60), "the first job never claimed the entry"
    t2 = threading.Thread(target=second, args=(got,))
    t2.start()
    t1.join(60), t2.join(60)
    assert order == ["first computes", "first stored", "second reads"]
    assert got[0] is not None and got[0].state == {"x": 1} and got[0].source["parent"] == "p"
