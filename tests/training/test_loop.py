"""The training loop (ttm_experiments/training/loop.py): parameter groups, losses, the selection of the best epoch,
the head stage's feature cache, and its guards (a non-finite loss, a collapsed class, gradients of frozen
parameters)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers.configs import TINY_TTM, backbone_conf, unfreeze_rule
from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import train
from ttm_experiments.config.schema import StageConf, TrainScope, parse_metric
from ttm_experiments.models.backbones import build_classifier
from ttm_experiments.models.unfreeze import apply_stage, find_blocks
from ttm_experiments.training import loop
from ttm_experiments.training.losses import FocalLoss, class_weights
from ttm_experiments.training.optim import param_groups
from ttm_experiments.training.stages import StagePlan

TINY = backbone_conf(**TINY_TTM, head_hidden=8)
LAYERS = unfreeze_rule(r"encoder\.mlp_mixer_encoder\.mixers\.\d+\.mixer_layers\.\d+")


# -- parameter groups and losses ------------------------------------------------------------------------------
def stage_plan(scope: str) -> StagePlan:
    return StagePlan(StageConf(name=scope, train=TrainScope(scope)), epochs=1, head_lr=1e-3, backbone_lr=1e-4)


def test_layer_decay_reads_the_same_block_list():
    model = build_classifier(TINY, num_channels=1, num_classes=2)
    blocks = find_blocks(model.backbone.model, LAYERS)
    stage = stage_plan("full")
    apply_stage(model, LAYERS, scope="full", stage="full")
    groups = param_groups(model, stage, [], blocks, layer_decay=0.5)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["head"] == 1e-3
    assert [lrs[b.name] for b in reversed(blocks)] == pytest.approx([1e-4, 5e-5, 2.5e-5, 1.25e-5])
    assert lrs["backbone.other"] == pytest.approx(1e-4 * 0.5**4)
    grouped = sum(p.numel() for g in groups for p in g["params"])
    assert grouped == sum(p.numel() for p in model.parameters())  # every trainable tensor exactly once


def test_partial_stage_groups_only_the_selected_blocks():
    model = build_classifier(TINY, num_channels=1, num_classes=2)
    _, selected = apply_stage(model, replace(LAYERS, last_n=1), scope="partial", stage="partial")
    stage = stage_plan("partial")
    groups = param_groups(model, stage, selected, find_blocks(model.backbone.model, LAYERS), 1.0)
    assert [g["name"] for g in groups] == ["head", selected[0].name]


def test_class_weights_balance_the_classes():
    w = class_weights(np.array([0] * 8 + [1] * 2), 2)
    assert w.tolist() == pytest.approx([10 / 16, 10 / 4])


def test_focal_loss_reduces_to_weighted_ce_at_gamma_zero():
    logits, target = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 1, 0])
    w = torch.tensor([1.0, 3.0])
    # the weighted mean (divided by the targets' total weight), as cross-entropy takes it
    ce = torch.nn.functional.cross_entropy(logits, target, weight=w)
    assert FocalLoss(w, 0.0)(logits, target) == pytest.approx(float(ce))


def test_focal_loss_with_gamma_zero_is_weighted_cross_entropy():
    logits, target = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0] * 12 + [1] * 4)
    weight = torch.tensor([0.6, 2.0])
    expected = torch.nn.CrossEntropyLoss(weight=weight)(logits, target)
    assert torch.allclose(FocalLoss(weight, gamma=0.0)(logits, target), expected)


# -- the best epoch: one selection metric and its direction ----------------------------------------------------
def _records(values: list[float], key: str):
    from ttm_experiments.training.loop import EpochRecord

    return [EpochRecord("s", i + 1, {}, {key: v, "auroc": 0.5 + i / 100}, []) for i, v in enumerate(values)]


@pytest.mark.parametrize(
    "metric, values, best",
    [
        ("val/balanced_acc", [0.6, 0.8, 0.7, 0.8], 2),
        ("val/loss", [0.9, 0.5, 0.4, 0.6], 3),
    ],
)
def test_best_epoch_follows_optimized_metric_and_its_direction(metric, values, best):
    from ttm_experiments.training.loop import LoopResult, Trainer

    trainer = Trainer.__new__(Trainer)  # only the selection: no data, no model
    trainer.selection = parse_metric(metric)
    trainer.model = torch.nn.Linear(1, 1)
    result = LoopResult()
    for record in _records(values, metric.split("/")[1]):
        trainer._select(record, result)
    assert result.best_epoch == best and result.best_value == values[best - 1]
    assert result.best_val_auroc == pytest.approx(0.5 + (best - 1) / 100)


@pytest.mark.slow
def test_run_selects_the_argmin_of_val_loss(smoke, runs_dir):
    objective = train(smoke("optimized_metric=val/loss", "experiment_name=loss"))
    client, (parent,), _ = runs_of(runs_dir, "loss")
    history = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, "val/loss")}
    assert parent.data.metrics["best/epoch"] == min(history, key=history.get)
    assert objective == pytest.approx(min(history.values())) == pytest.approx(parent.data.metrics["best/val_loss"])


# -- whole runs: the feature cache, and the guards -------------------------------------------------------------
def test_head_stage_gives_the_same_results_with_and_without_the_feature_cache(smoke, runs_dir, monkeypatch):
    """The head-only stage caches the frozen backbone's outputs; above the size limit it recomputes them.
    Both paths must train the same head."""
    overrides = ("schedule=head_only", "trainer.max_epochs_per_stage=2")
    train(smoke(*overrides, "experiment_name=cached"))
    monkeypatch.setattr(loop, "FEATURE_CACHE_BYTES", 0)
    train(smoke(*overrides, "experiment_name=uncached"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    metrics = [
        client.search_runs([client.get_experiment_by_name(e).experiment_id], "tags.stage = 'head'")[0].data.metrics
        for e in ("cached", "uncached")
    ]
    assert metrics[0].keys() == metrics[1].keys()
    for key in metrics[0]:
        assert metrics[0][key] == pytest.approx(metrics[1][key], abs=1e-5), key


def test_non_finite_loss_stops_with_the_batch_and_marks_the_run_failed(smoke, runs_dir, monkeypatch):
    real = loop.Trainer.train_epoch

    def poisoned(self, optimizer, scheduler, desc, check_gradients=False):
        with torch.no_grad():
            next(self.model.head.parameters()).fill_(float("nan"))
        return real(self, optimizer, scheduler, desc, check_gradients)

    monkeypatch.setattr(loop.Trainer, "train_epoch", poisoned)
    with pytest.raises(loop.NonFiniteLoss, match=r"the training loss is nan at batch 0.*Lower optim.lr"):
        train(smoke("experiment_name=nan"))
    _, parents, runs = runs_of(runs_dir, "nan")
    assert parents[0].info.status == "FAILED" and "NonFiniteLoss" in parents[0].data.tags["failure"]
    assert all(r.info.status == "FAILED" for r in runs)
    assert not list(runs_dir.glob("outputs/**/best.pt"))  # nothing that looks like a result


def test_collapse_stop_ends_the_stage_and_says_which_class(smoke, runs_dir, caplog):
    # threshold 0.99: any class under 99 % accuracy counts as collapsed, so the first epoch stops the stage
    train(
        smoke(
            "experiment_name=stop",
            "trainer.collapse_action=stop",
            "trainer.collapse_threshold=0.99",
            "trainer.max_epochs_per_stage=3",
        )
    )
    _, parents, runs = runs_of(runs_dir, "stop")
    head = next(r for r in runs if r.data.tags.get("stage") == "head")
    assert head.data.tags["collapse_stop"].startswith("head@1:")
    assert "MODE COLLAPSE at epoch 1 (stage head)" in caplog.text
    assert parents[0].data.tags["mode_collapse"] == "true"


def test_gradient_check_catches_a_frozen_parameter_with_a_gradient():
    model = build_classifier(backbone_conf(**TINY_TTM, head_hidden=8), num_channels=1, num_classes=2)
    model(torch.randn(2, 1, 128)).sum().backward()  # everything trainable: all get gradients
    loop.check_trainable_gradients(model, "ok")
    next(model.backbone.parameters()).requires_grad_(False)
    with pytest.raises(loop.GradientMismatch, match="1 frozen ones got one"):
        loop.check_trainable_gradients(model, "stage")
