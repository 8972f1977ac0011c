"""Masked-patch pre-training and contrastive continuation: masking, heads, losses, the learning-rate schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.configs import TINY_TTM, backbone_conf
from ttm_experiments.config.schema import StageConf, StageKind
from ttm_experiments.models.backbones import build_backbone
from ttm_experiments.training.ssl import (
    ReconstructionHead,
    SSLObjective,
    info_nce,
    masked_reconstruction,
    observed_from_mask,
    patch_mask,
)

SPECS = [  # built with 3 channels
    backbone_conf(**TINY_TTM),
    backbone_conf(
        "patchtst",
        context_length=128,
        patch_length=16,
        patch_stride=16,
        d_model=16,
        num_layers=2,
        num_attention_heads=2,
        ffn_dim=32,
    ),
]


def test_patch_mask_masks_the_configured_fraction_per_window():
    mask = patch_mask(32, 16, 0.4, torch.Generator().manual_seed(0))
    assert mask.shape == (32, 16) and mask.dtype == torch.bool
    assert (mask.sum(1) == round(0.4 * 16)).all()
    assert len({tuple(m.tolist()) for m in mask}) > 1  # different patches per window


def test_masked_patches_are_the_same_in_every_channel():
    mask = patch_mask(4, 8, 0.5, torch.Generator().manual_seed(1))
    observed = observed_from_mask(mask, channels=3, patch_length=16)
    assert observed.shape == (4, 3, 128)
    assert (observed[:, 0] == observed[:, 1]).all() and (observed[:, 0] == observed[:, 2]).all()
    patches = observed[:, 0].reshape(4, 8, 16)
    assert (patches.all(-1) == ~mask).all() and (patches.any(-1) == ~mask).all()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind.value)
def test_reconstruction_head_shape(spec):
    backbone = build_backbone(spec, num_channels=3)
    hidden, _, _ = backbone(torch.randn(2, 3, 128))
    out = ReconstructionHead(spec.d_model, spec.patch_length)(hidden)
    assert out.shape == (2, 3, 128 // 16, 16)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind.value)
def test_loss_only_sees_masked_patches(spec):
    """The loss ignores the head's prediction on observed (unmasked) patches."""
    torch.manual_seed(0)
    backbone = build_backbone(spec, num_channels=3).eval()
    head = ReconstructionHead(spec.d_model, spec.patch_length)
    x = torch.randn(2, 3, 128)
    mask = patch_mask(2, 8, 0.25, torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = masked_reconstruction(backbone, head, x, mask)["masked"]
        # a hook that corrupts the head's output on observed patches only
        handle = head.register_forward_hook(lambda m, i, o: torch.where(mask[:, None, :, None], o, o + 100.0))
        corrupted = masked_reconstruction(backbone, head, x, mask)["masked"]
        handle.remove()
    assert torch.allclose(base, corrupted)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind.value)
def test_the_backbone_never_sees_masked_samples(spec):
    """Changing only masked samples leaves the backbone's hidden state unchanged; only the targets move."""
    backbone = build_backbone(spec, num_channels=3).eval()
    head = ReconstructionHead(spec.d_model, spec.patch_length)
    x = torch.randn(2, 3, 128)
    mask = patch_mask(2, 8, 0.5, torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[~observed_from_mask(mask, 3, 16)] += 5.0
    seen = []
    handle = backbone.register_forward_hook(lambda m, i, o: seen.append(o[0]))
    with torch.no_grad():
        a = masked_reconstruction(backbone, head, x, mask)
        b = masked_reconstruction(backbone, head, changed, mask)
    handle.remove()
    assert torch.allclose(seen[0], seen[1], atol=1e-5)
    assert not torch.allclose(a["masked"], b["masked"])


def test_info_nce_prefers_matching_views():
    z = torch.randn(8, 16)
    assert info_nce(z, z + 0.01 * torch.randn(8, 16), 0.1) < info_nce(z, torch.randn(8, 16), 0.1)


@pytest.mark.parametrize("kind", ["ssl_masked", "ssl_contrastive"])
def test_objective_trains_the_backbone(kind):
    spec = SPECS[0]
    backbone = build_backbone(spec, num_channels=3)
    objective = SSLObjective(backbone, StageConf(name="ssl", kind=StageKind(kind), stft_weight=0.1))
    parts = objective(torch.randn(4, 3, 128), torch.Generator().manual_seed(0))
    parts["loss"].backward()
    assert all(torch.isfinite(v) for v in parts.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())
    assert ("contrastive" in parts) == (kind == "ssl_contrastive")


# -- the hybrid and pretrain schedules end to end ------------------------------------------------------

SMOKE_HYBRID = ("schedule=hybrid",)


def _runs(runs_dir, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_hybrid_schedule_runs_every_stage_in_mlflow(smoke, runs_dir):
    from ttm_experiments.cli.train import train

    train(smoke(*SMOKE_HYBRID, "experiment_name=hybrid"))
    client, runs_found = _runs(runs_dir, "hybrid")
    parent = next(r for r in runs_found if "mlflow.parentRunId" not in r.data.tags)
    stages = {r.data.tags["stage"]: r for r in runs_found if "mlflow.parentRunId" in r.data.tags}
    assert list(stages) and set(stages) == {"pretrain", "target_ssl", "head", "partial", "full"}
    for name in ("pretrain", "target_ssl"):
        metrics = stages[name].data.metrics
        assert {"train/ssl_loss", "val/ssl_loss", "val/ssl_masked", "probe/val_auroc"} <= metrics.keys()
    assert "train/ssl_contrastive" in stages["target_ssl"].data.metrics
    assert "test/auroc" in parent.data.metrics
    out = Path(parent.data.tags["output_dir"])
    assert {p.name for p in out.glob("stage-*.pt")} == {f"stage-{s}.pt" for s in stages}


def test_pretrain_writes_a_foundation_checkpoint_that_fine_tuning_loads(smoke, runs_dir):
    from ttm_experiments.cli.train import train

    train(smoke("schedule=pretrain", "experiment_name=pre"))
    client, runs_found = _runs(runs_dir, "pre")
    foundation = Path(
        runs_found[0].data.tags.get("foundation")
        or next(r.data.tags["foundation"] for r in runs_found if "foundation" in r.data.tags)
    )
    assert foundation.is_file()
    saved = torch.load(foundation, weights_only=True)
    assert saved["stage"] == "pretrain" and saved["architecture"]["d_model"] == 16

    # rerun only fine-tuning, starting at 'partial', from those weights
    train(smoke(f"backbone.pretrained_path={foundation}", "schedule.start_at=partial", "experiment_name=ft"))
    client, runs_found = _runs(runs_dir, "ft")
    parent = next(r for r in runs_found if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["init"] == "ssl"
    assert sorted(r.data.tags["stage"] for r in runs_found if "mlflow.parentRunId" in r.data.tags) == [
        "full",
        "partial",
    ]


def test_start_at_loads_the_given_weights(smoke, runs_dir, tmp_path):
    """The model that starts fine-tuning holds exactly the checkpoint's backbone tensors."""
    from ttm_experiments.cli.train import run_info
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.models.backbones import build_classifier
    from ttm_experiments.models.checkpoint import save_classifier
    from ttm_experiments.training.recipe import TrainRecipe

    source = build_classifier(backbone_conf(**TINY_TTM, head_dropout=0.1), num_channels=1, num_classes=2)
    with torch.no_grad():
        for p in source.backbone.parameters():
            p.add_(0.5)
    ckpt = tmp_path / "stage-head.pt"
    save_classifier(ckpt, source, "head", ("poor", "good"))
    cfg = smoke(f"backbone.pretrained_path={ckpt}", "schedule.start_at=partial")
    recipe = TrainRecipe(to_config(cfg), run_info(cfg))
    recipe.setup()
    assert [s.name for s in recipe.stages] == ["partial", "full"]
    for (name, a), b in zip(source.backbone.state_dict().items(), recipe.model.backbone.state_dict().values()):
        assert torch.equal(a, b), name


def test_start_at_without_weights_is_refused(smoke):
    from ttm_experiments.cli.train import train
    from ttm_experiments.errors import ConfigError

    with pytest.raises(ConfigError, match="backbone.pretrained_path is null"):
        train(smoke("schedule.start_at=partial"))


def test_ssl_stage_changes_the_backbone(smoke, runs_dir):
    from ttm_experiments.cli.train import run_info
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training.recipe import TrainRecipe

    cfg = smoke("schedule=pretrain", "schedule.stages.0.epochs=1")
    recipe = TrainRecipe(to_config(cfg), run_info(cfg))
    recipe.setup()
    before = {k: v.clone() for k, v in recipe.model.backbone.state_dict().items()}
    recipe.train()
    changed = [k for k, v in recipe.model.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    recipe.tracker.end_run()


def test_ssl_schedule_covers_every_batch_the_loop_runs():
    from ttm_experiments.config.schema import OptimConf, StageConf, StageKind, TrainerConf
    from ttm_experiments.models.backbones import build_backbone
    from ttm_experiments.training.ssl import SSLRunner, train_steps
    from ttm_experiments.training.stages import StagePlan

    assert train_steps(70, 32) == 3 and train_steps(65, 32) == 2 and train_steps(10, 32) == 1
    runner = SSLRunner(
        build_backbone(backbone_conf(**TINY_TTM), num_channels=1),
        optim=OptimConf(batch_size=32),
        trainer=TrainerConf(),
        device=torch.device("cpu"),
        seed=0,
        tracker=None,
    )
    stage = StagePlan(StageConf(name="ssl", kind=StageKind.ssl_masked), epochs=2, head_lr=1e-3, backbone_lr=1e-3)
    _, optimizer, scheduler = runner._setup(stage, 70, None)
    for _ in range(2 * 3 - 1):  # the steps before the last one of the stage
        optimizer.step()
        scheduler.step()
    assert min(g["lr"] for g in optimizer.param_groups) > 0
