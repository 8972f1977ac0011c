"""`experiment=tspulse_recipe`: granite-tsfm's TSPulse classification recipe in the suite's contract. Pinned: the
freezing rule (only the time and FFT patch encodings and the head get gradients), and a run with the recipe's
finder, OneCycle, early stopping and validation-loss selection recorded as such in MLflow."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.configs import compose_config
from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import train
from ttm_experiments.config.spec import to_config
from ttm_experiments.models.pretrained import build_model
from ttm_experiments.models.unfreeze import apply_stage

# random weights (no hub here), small data, few epochs and finder steps: the recipe's wiring, not its numbers
SMALL = (
    "experiment=tspulse_recipe",
    "backbone.pretrained_path=null",
    "dataset.n_subjects=10",
    "dataset.windows_per_subject=12",
    "trainer.max_epochs_per_stage=4",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "optim.lr_find_steps=10",
)


def test_the_recipe_trains_only_the_patch_encodings_and_the_head(tmp_path):
    c = to_config(compose_config([*SMALL, f"paths.runs_dir={tmp_path}"]))
    assert (c.backbone.name, c.schedule.name, c.optimized_metric) == ("tspulse_r1", "tspulse_recipe", "val/loss")
    model, _ = build_model(c.backbone, num_channels=1, num_classes=2)
    stage = c.schedule.stages[0]
    apply_stage(model, c.unfreeze, scope=stage.train.value, stage=stage.name)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 512)), torch.tensor([0, 1, 0, 1])).backward()
    named = model.named_parameters()
    with_grad = {n.split(".")[0] if n.startswith("head") else n for n, p in named if p.grad is not None}
    assert with_grad == {
        "head",
        "backbone.model.time_encoding.patcher.weight",
        "backbone.model.time_encoding.patcher.bias",
        "backbone.model.fft_encoding.patcher.weight",
        "backbone.model.fft_encoding.patcher.bias",
    }


@pytest.mark.slow
def test_a_recipe_run_records_its_finder_onecycle_and_early_stopping(runs_dir):
    # not the `smoke` fixture: its debug=tiny would replace the recipe's backbone
    train(compose_config([*SMALL, f"paths.runs_dir={runs_dir}", "experiment_name=recipe"]))
    client, parents, _ = runs_of(runs_dir, "recipe")
    run = parents[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.scheduler"] == "onecycle" and run.data.tags["optim.lr_source"] == "finder"
    assert float(run.data.params["optim.lr"]) == float(run.data.params["optim.lr_found"])
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert epochs[0] == 1 and len(epochs) <= 4
