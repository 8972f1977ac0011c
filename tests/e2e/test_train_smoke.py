"""A debug=tiny run end to end into a temporary SQLite MLflow store, read back with MlflowClient: the session's
smoke run (the `smoke_run` fixture), then other backbones, losses and schedules, each in a store of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ttm_experiments.cli.train import train

CLASSES = ("poor", "good")
EPOCH_KEYS = ["loss", "acc", "balanced_acc", "auroc", "auprc", "f1"] + [f"acc/{c}" for c in CLASSES]


def _parent(runs_found):
    parents = [r for r in runs_found if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    return parents[0]


def test_one_parent_and_one_nested_run_per_stage(smoke_run):
    runs_found = smoke_run.runs_found
    parent = _parent(runs_found)
    children = [r for r in runs_found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["stage"] for r in children) == ["full", "head", "partial"]
    assert all(r.info.status == "FINISHED" for r in runs_found)


def test_contracted_metrics_per_epoch_with_step_across_stages(smoke_run):
    client, runs_found = smoke_run.client, smoke_run.runs_found
    parent = _parent(runs_found)
    for split in ("train", "val"):
        for key in EPOCH_KEYS:
            history = client.get_metric_history(parent.info.run_id, f"{split}/{key}")
            assert [m.step for m in history] == [1, 2, 3], f"{split}/{key}"
    children = {r.data.tags["stage"]: r for r in runs_found if "mlflow.parentRunId" in r.data.tags}
    steps = [m.step for m in client.get_metric_history(children["partial"].info.run_id, "val/auroc")]
    assert steps == [2]


def test_test_metrics_tags_and_artifacts_on_the_parent(smoke_run):
    objective, client, runs_found = smoke_run.objective, smoke_run.client, smoke_run.runs_found
    parent = _parent(runs_found)
    metrics = parent.data.metrics
    for key in EPOCH_KEYS:
        assert f"test/{key}" in metrics
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    assert metrics["test/auroc_ci_low"] <= metrics["test/auroc"] <= metrics["test/auroc_ci_high"]
    assert objective == pytest.approx(metrics["best/val_auroc"])
    tags = parent.data.tags
    assert tags["unfreeze.strategy"] == "pattern"
    assert tags["mode_collapse"] in ("true", "false")
    assert tags["init"] == "random"
    assert parent.data.params["unfreeze.last_n"] == "2"
    assert parent.data.params["backbone.name"] == "ttm_tiny"
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "test")}
    assert {"test/confusion_matrix.png", "test/confusion_matrix.json"} <= files
    local = Path(client.download_artifacts(parent.info.run_id, "unfreeze/partial.json"))
    report = json.loads(local.read_text())
    assert report["blocks_unfrozen"] == [
        "encoder.mlp_mixer_encoder.mixers.1.mixer_layers.0",
        "encoder.mlp_mixer_encoder.mixers.1.mixer_layers.1",
    ]
    assert report["trainable_params"] + report["frozen_params"] == report["total_params"]
    cm = json.loads(Path(client.download_artifacts(parent.info.run_id, "test/confusion_matrix.json")).read_text())
    assert cm["classes"] == list(CLASSES)
    config = Path(client.download_artifacts(parent.info.run_id, "config/config.yaml")).read_text()
    assert "ttm_tiny" in config


def test_everything_lands_below_runs_dir(smoke_run):
    runs = smoke_run.runs
    assert (runs / "mlflow.db").is_file()
    assert (runs / "mlartifacts").is_dir()
    assert list(runs.glob("outputs/**/best.pt"))


@pytest.mark.parametrize(
    "overrides",
    [
        [
            "backbone=patchtst",
            "backbone.context_length=128",
            "backbone.patch_length=16",
            "backbone.patch_stride=16",
            "backbone.d_model=16",
            "backbone.ffn_dim=32",
            "unfreeze.last_n=1",
        ],
        ["dataset.channels=3", "optim.loss=focal", "optim.layer_decay=0.7"],
        # the sampler balances classes itself: with the unweighted loss (a weighted one is refused)
        ["schedule=head_only", "schedule.stages.0.epochs=1", "optim.loss=ce", "optim.balanced_sampler=true"],
    ],
    ids=["patchtst", "3ch-focal-decay", "head_only-balanced"],
)
def test_other_backbones_losses_and_schedules_run(smoke, runs_dir, overrides):
    objective = train(smoke(*overrides, "experiment_name=variants"))
    assert 0.0 <= objective <= 1.0
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    runs_found = client.search_runs([client.get_experiment_by_name("variants").experiment_id])
    parent = _parent(runs_found)
    assert "test/acc/good" in parent.data.metrics


def test_predecessor_rule_with_warn_trains_head_only_and_tags_the_run(smoke, runs_dir):
    train(smoke("experiment=predecessor_rule"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    runs_found = client.search_runs([client.get_experiment_by_name("ttm-ppg-quality-smoke").experiment_id])
    parent = _parent(runs_found)
    assert parent.data.tags["unfreeze.empty"] == "true"
    assert parent.data.tags["unfreeze.strategy"] == "depth"
    partial = [r for r in runs_found if r.data.tags.get("stage") == "partial"][0]
    assert partial.data.tags["unfreeze.empty"] == "true"
    report = json.loads(Path(client.download_artifacts(parent.info.run_id, "unfreeze/partial.json")).read_text())
    assert report["blocks_unfrozen"] == [] and report["empty"] is True
