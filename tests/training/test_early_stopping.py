"""`trainer.early_stopping_patience`: a supervised stage stops after that many epochs without a better selection
metric; which epochs ran and the stop reach MLflow; the count is a pure function of the stage's history."""

from __future__ import annotations

import math

import pytest

from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import train
from ttm_experiments.config.schema import parse_metric
from ttm_experiments.errors import ConfigError
from ttm_experiments.training.loop import epochs_without_improvement

AUROC, LOSS = parse_metric("val/auroc"), parse_metric("val/loss")
# head_only (one stage of 20 epochs) capped at 5: a rate so small that no validation metric can move
FLAT = ("schedule=head_only", "trainer.max_epochs_per_stage=5", "optim.lr=1e-12", "trainer.num_threads=1")


@pytest.mark.parametrize(
    "values,metric,since",
    [
        ([0.5, 0.6, 0.7], AUROC, 0),
        ([0.5, 0.7, 0.6, 0.65], AUROC, 2),
        ([0.5, 0.5, 0.5], AUROC, 2),  # equal is not better
        ([0.9, 0.8, 0.85], LOSS, 1),  # a loss is minimised
        ([math.nan, math.nan], AUROC, 2),  # NaN is never the best
        ([math.nan, 0.4, math.nan], AUROC, 1),
    ],
)
def test_epochs_without_improvement(values, metric, since):
    assert epochs_without_improvement(values, metric.better) == since


def _epochs_run(runs_dir, experiment):
    client, parents, _ = runs_of(runs_dir, experiment)
    steps = [m.step for m in client.get_metric_history(parents[0].info.run_id, "val/auroc")]
    return steps, parents[0].data.tags


@pytest.mark.parametrize("metric", ["val/auroc", "val/loss"])
def test_a_stage_whose_metric_cannot_improve_stops_after_patience_epochs(smoke, runs_dir, metric):
    train(smoke(*FLAT, "trainer.early_stopping_patience=2", f"optimized_metric={metric}", "experiment_name=es"))
    steps, tags = _epochs_run(runs_dir, "es")
    assert steps == [1, 2, 3]  # epoch 1 is the best; 2 and 3 are not better: stop before epoch 4 of 5
    assert tags["early_stop.head"] == "epoch 3 of 5"


def test_off_by_default_every_epoch_runs(smoke, runs_dir):
    train(smoke(*FLAT, "experiment_name=es-off"))
    steps, tags = _epochs_run(runs_dir, "es-off")
    assert steps == [1, 2, 3, 4, 5] and not any(k.startswith("early_stop") for k in tags)


def test_a_negative_patience_is_refused_before_training(smoke):
    with pytest.raises(ConfigError, match="trainer.early_stopping_patience=-1"):
        train(smoke("trainer.early_stopping_patience=-1"))
