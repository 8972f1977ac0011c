"""`schedule=linear_probe` (training/linear_probe.py): the backbone frozen and untouched, its features computed once
per split (and reused from the stage cache), C chosen on validation by the selection metric, the metrics of any
run in a real MLflow store, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import run_info, train
from ttm_experiments.config.schema import parse_metric
from ttm_experiments.config.spec import to_config
from ttm_experiments.data.base import WindowSet
from ttm_experiments.errors import ConfigError
from ttm_experiments.training.linear_probe import LinearProbeRecipe, choose_c

PROBE = "schedule=linear_probe"
EXPERIMENT = "ttm-ppg-quality-smoke"


def probe_recipe(cfg) -> LinearProbeRecipe:
    recipe = LinearProbeRecipe(to_config(cfg), run_info(cfg))
    recipe.setup()
    return recipe


def count_rows(backbone: torch.nn.Module) -> list[int]:
    """Rows of every forward call of the backbone (a hook on the real module)."""
    rows: list[int] = []
    backbone.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    return rows


@pytest.mark.slow
def test_the_backbone_gets_no_gradient_and_no_change_and_runs_once_per_split(smoke, runs_dir):
    cfg = smoke(PROBE, "optim.eval_batch_size=16")
    recipe = probe_recipe(cfg)
    before = {k: v.clone() for k, v in recipe.model.state_dict().items()}
    rows = count_rows(recipe.model.backbone)
    recipe.finish(recipe.train())
    sizes = [len(recipe.splits.train), len(recipe.splits.val), len(recipe.splits.test)]
    # one pass over each split, in batches of optim.eval_batch_size, whatever the size of the C grid (6)
    assert sum(rows) == sum(sizes) and len(rows) == sum(-(-n // 16) for n in sizes)
    assert list(recipe.features_from) == ["train", "val", "test"]  # the test split last, after the choice
    assert all(p.grad is None and not p.requires_grad for p in recipe.model.parameters())
    after = recipe.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    # the same split and weights again (seed 0: the same random backbone): every split's features from the cache
    again = probe_recipe(smoke(PROBE, "optim.eval_batch_size=16"))
    rows_again = count_rows(again.model.backbone)
    again.finish(again.train())
    assert rows_again == [] and set(again.features_from.values()) == {"reused"}
    client, runs, _ = runs_of(runs_dir, EXPERIMENT)
    assert runs[1].data.tags["probe.features"] == "train=reused,val=reused,test=reused"
    assert runs[0].data.metrics["test/auroc"] == runs[1].data.metrics["test/auroc"]


def test_metrics_reach_mlflow_like_any_run(smoke, runs_dir):
    train(smoke(PROBE))
    client, (run,), _ = runs_of(runs_dir, EXPERIMENT)
    m, params, tags = run.data.metrics, run.data.params, run.data.tags
    for key in ("auroc", "acc", "balanced_acc", "auprc", "f1", "loss", "acc/poor", "acc/good"):
        assert np.isfinite(m[f"train/{key}"]) and np.isfinite(m[f"val/{key}"]) and np.isfinite(m[f"test/{key}"])
    assert {"test/auroc_ci_low", "test/auroc_ci_high", "test/n_subjects", "best/val_auroc"} <= set(m)
    assert params["schedule.name"] == "linear_probe" and tags["schedule"] == "linear_probe"
    grid = json.loads(open(client.download_artifacts(run.info.run_id, "probe/grid.json")).read())
    assert [g["C"] for g in grid["grid"]] == [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
    val_auroc = [g["val"]["auroc"] for g in grid["grid"]]
    assert grid["chosen_C"] == m["probe/C"] == grid["grid"][int(np.argmax(val_auroc))]["C"]
    assert m["val/auroc"] == max(val_auroc) and tags["probe.C"] == f"{m['probe/C']:g}"
    history = client.get_metric_history(run.info.run_id, "probe/val_auroc")
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(val_auroc)
    predictions = client.download_artifacts(run.info.run_id, "test/predictions.csv")
    assert open(predictions).readline().strip() == "subject,label,p_poor,p_good"


def features(n: int, seed: int, noise_dims: int = 30) -> tuple[np.ndarray, WindowSet]:
    """One informative feature and many noise features (a regularisation grid then matters)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int64)
    x = np.column_stack([labels + rng.normal(0, 1.0, n), rng.normal(size=(n, noise_dims))])
    ws = WindowSet(np.zeros((n, 1, 2), np.float32), labels, np.arange(n) // 2, ("poor", "good"), 1.0)
    return x, ws


@pytest.mark.parametrize("metric", ["val/auroc", "val/loss", "val/acc/good", "val/balanced_acc"])
def test_c_is_chosen_on_validation_by_the_selection_metric(metric):
    train_x, train_ws = features(60, 0)
    val_x, val_ws = features(80, 1)
    parsed = parse_metric(metric)
    fit = choose_c(
        train_x, train_ws, val_x, val_ws, grid=[10.0, 0.001, 1.0, 0.01], metric=parsed, class_weight="balanced"
    )
    assert fit.grid == [0.001, 0.01, 1.0, 10.0]  # ascending: a tie goes to the stronger regularisation
    values = [m[parsed.key] for m in fit.val]
    best = min(values) if parsed.direction == "minimize" else max(values)
    assert fit.chosen == values.index(best)
    # the chosen model is the one fitted with that C
    assert fit.model[-1].C == fit.c


def test_a_baseline_backbone_is_refused_before_any_run(smoke, runs_dir):
    with pytest.raises(ConfigError, match="backbone=baseline_sqi is already a logistic regression"):
        train(smoke(PROBE, "backbone=baseline_sqi"))
    assert not (runs_dir / "mlflow.db").exists()


@pytest.mark.parametrize(
    "override, match",
    [
        ("schedule.probe_c_grid=[1.0,-1.0]", r"probe_c_grid\[1\]=-1.0 must be a finite number > 0"),
        ("optim.loss=focal", "optim.loss=focal has no logistic-regression counterpart"),
        ("optimized_metric=train/auroc", "chooses C on validation"),
    ],
)
def test_bad_probe_settings_are_refused(smoke, runs_dir, override, match):
    with pytest.raises(ConfigError, match=match):
        train(smoke(PROBE, override))


def test_stages_and_a_grid_together_are_refused(smoke):
    with pytest.raises(ConfigError, match="both stages and schedule.probe_c_grid"):
        to_config(smoke("schedule.probe_c_grid=[1.0]"))
