"""Unfreezing on the real TTM and PatchTST: blocks, selection, errors, gradients; frozen blocks stay frozen
(unfreeze.frozen_mode: no dropout, no BatchNorm statistics updates in them)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.helpers.configs import TINY_TTM, backbone_conf, unfreeze_rule
from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import train
from ttm_experiments.errors import UnfreezeError
from ttm_experiments.models.backbones import build_classifier
from ttm_experiments.models.unfreeze import apply_stage, count_params, find_blocks, plan_stage

TTM_LAYERS = r"encoder\.mlp_mixer_encoder\.mixers\.\d+\.mixer_layers\.\d+"
TTM_LEVELS = r"encoder\.mlp_mixer_encoder\.mixers\.\d+"
PATCHTST_LAYERS = r"encoder\.layers\.\d+"
PREDECESSOR = unfreeze_rule(keywords=["layer", "block"], max_dots=1)


def ttm(context=1024, patch=64, d_model=192, levels=3, channels=1):
    conf = backbone_conf(
        context_length=context,
        patch_length=patch,
        patch_stride=patch,
        d_model=d_model,
        num_layers=2,
        adaptive_patching_levels=levels,
    )
    return build_classifier(conf, num_channels=channels, num_classes=2)


def patchtst(channels=1):
    conf = backbone_conf(
        "patchtst",
        context_length=128,
        patch_length=16,
        patch_stride=16,
        d_model=32,
        num_layers=3,
        num_attention_heads=4,
        ffn_dim=64,
    )
    return build_classifier(conf, num_channels=channels, num_classes=2)


@pytest.fixture(scope="module")
def ttm_1024():
    return ttm()


def test_ttm_1024_blocks_are_the_six_mixer_layers(ttm_1024):
    blocks = find_blocks(ttm_1024.backbone.model, unfreeze_rule(TTM_LAYERS))
    assert [b.name for b in blocks] == [
        f"encoder.mlp_mixer_encoder.mixers.{lvl}.mixer_layers.{layer}" for lvl in range(3) for layer in range(2)
    ]
    assert [b.params for b in blocks] == [32_640, 32_640, 52_096, 52_096, 187_200, 187_200]


def test_ttm_1024_levels_pattern_gives_three_blocks_with_the_predecessors_counts(ttm_1024):
    blocks = find_blocks(ttm_1024.backbone.model, unfreeze_rule(TTM_LEVELS))
    assert [b.params for b in blocks] == [65_280, 104_192, 374_400]


@pytest.mark.parametrize("last_n,expected_backbone", [(0, 0), (1, 187_200), (2, 374_400), (3, 426_496), (6, 543_872)])
def test_last_n_unfreezes_exactly_the_expected_parameters(ttm_1024, last_n, expected_backbone):
    rule = unfreeze_rule(TTM_LAYERS)
    report, _ = apply_stage(ttm_1024, replace(rule, last_n=last_n), scope="partial", stage="p")
    trainable_backbone = count_params(ttm_1024.backbone, trainable_only=True)
    assert trainable_backbone == expected_backbone
    assert report.trainable_params == expected_backbone + count_params(ttm_1024.head)
    assert report.frozen_params == count_params(ttm_1024) - report.trainable_params


def test_distinct_last_n_give_distinct_parameter_sets(ttm_1024):
    """The predecessor's 'fix' mixed parents and children, so n=2 and n=3 trained the same 374,400."""
    rule = unfreeze_rule(TTM_LAYERS)
    counts = set()
    for n in range(7):
        report, _ = apply_stage(ttm_1024, replace(rule, last_n=n), scope="partial", stage="p")
        counts.add(report.trainable_params)
    assert len(counts) == 7


def test_block_order_is_execution_order():
    """Registration order (what find_blocks returns) equals the order the blocks run in."""
    for model, pattern in ((ttm(128, 16, 16, 2), TTM_LAYERS), (patchtst(), PATCHTST_LAYERS)):
        blocks = find_blocks(model.backbone.model, unfreeze_rule(pattern))
        ran: list[str] = []
        hooks = [b.module.register_forward_hook(lambda m, i, o, n=b.name, ran=ran: ran.append(n)) for b in blocks]
        model.eval()
        with torch.no_grad():
            model(torch.randn(2, 1, 128))
        for h in hooks:
            h.remove()
        assert ran == [b.name for b in blocks]


def test_predecessor_depth_rule_matches_nothing_on_ttm_and_fails_with_the_fix(ttm_1024):
    assert find_blocks(ttm_1024.backbone.model, PREDECESSOR) == []
    with pytest.raises(UnfreezeError) as err:
        plan_stage(ttm_1024.backbone.model, replace(PREDECESSOR, last_n=2), scope="partial", stage="partial")
    message = str(err.value)
    assert "matches no module" in message
    assert "encoder.mlp_mixer_encoder.mixers.2.mixer_layers.1" in message  # a candidate name
    assert "unfreeze=pattern" in message and "on_empty=warn" in message


def test_depth_rule_with_warn_goes_on_head_only_and_says_so(ttm_1024):
    warn = replace(PREDECESSOR, on_empty="warn")
    report, selected = apply_stage(ttm_1024, warn, scope="partial", stage="partial")
    assert selected == [] and report.empty
    assert report.trainable_params == count_params(ttm_1024.head)
    assert "WARNING" in report.format()


def test_pattern_that_matches_nothing_is_an_error(ttm_1024):
    with pytest.raises(UnfreezeError, match="matches no module"):
        plan_stage(ttm_1024.backbone.model, unfreeze_rule(r"blocks\.\d+", last_n=1), scope="partial", stage="partial")


def test_head_and_full_stages_do_not_need_blocks(ttm_1024):
    rule = unfreeze_rule(r"nothing")
    report, _ = apply_stage(ttm_1024, replace(rule, last_n=2), scope="full", stage="full")
    assert report.trainable_params == count_params(ttm_1024)
    report, _ = apply_stage(ttm_1024, replace(rule, last_n=2), scope="head", stage="head")
    assert report.trainable_params == count_params(ttm_1024.head)


@pytest.mark.parametrize("last_n", [-1, 7])
def test_out_of_range_last_n_says_how_many_blocks_there_are(ttm_1024, last_n):
    with pytest.raises(UnfreezeError, match="has 6 blocks"):
        plan_stage(ttm_1024.backbone.model, unfreeze_rule(TTM_LAYERS, last_n=last_n), scope="partial", stage="p")


def test_nested_matches_are_an_error_naming_both(ttm_1024):
    nested = unfreeze_rule(rf"{TTM_LEVELS}(\.mixer_layers\.\d+)?")
    with pytest.raises(UnfreezeError) as err:
        find_blocks(ttm_1024.backbone.model, nested)
    assert "'encoder.mlp_mixer_encoder.mixers.0'" in str(err.value)
    assert "'encoder.mlp_mixer_encoder.mixers.0.mixer_layers.0'" in str(err.value)
    assert "on_nested" in str(err.value)


def test_nested_matches_resolved_when_configured(ttm_1024):
    pattern = rf"{TTM_LEVELS}(\.mixer_layers\.\d+)?"
    outer = find_blocks(ttm_1024.backbone.model, unfreeze_rule(pattern, on_nested="outer"))
    inner = find_blocks(ttm_1024.backbone.model, unfreeze_rule(pattern, on_nested="inner"))
    assert [b.params for b in outer] == [65_280, 104_192, 374_400]
    assert len(inner) == 6


def test_invalid_regex_is_a_clear_error(ttm_1024):
    with pytest.raises(UnfreezeError, match="not a valid regex"):
        find_blocks(ttm_1024.backbone.model, unfreeze_rule(r"encoder.(layers"))


def test_patchtst_blocks_and_predecessor_rule():
    model = patchtst()
    blocks = find_blocks(model.backbone.model, unfreeze_rule(PATCHTST_LAYERS))
    assert [b.name for b in blocks] == ["encoder.layers.0", "encoder.layers.1", "encoder.layers.2"]
    # on PatchTST the depth rule selects the whole ModuleList as one block
    assert [b.name for b in find_blocks(model.backbone.model, PREDECESSOR)] == ["encoder.layers"]


@pytest.mark.parametrize(
    "make,pattern",
    [(lambda: ttm(128, 16, 16, 2, channels=3), TTM_LAYERS), (lambda: patchtst(channels=3), PATCHTST_LAYERS)],
)
def test_only_trainable_parameters_receive_gradients(make, pattern):
    model = make()
    rule = unfreeze_rule(pattern)
    report, selected = apply_stage(model, replace(rule, last_n=1), scope="partial", stage="partial")
    model.train()
    loss = model(torch.randn(4, 3, 128)).logsumexp(dim=1).mean()
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    block_prefix = f"backbone.model.{selected[0].name}."
    assert with_grad and with_grad <= trainable
    assert all(n.startswith(("head.", block_prefix)) for n in trainable)
    assert any(n.startswith(block_prefix) for n in with_grad)
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) == report.trainable_params


def _bn_stats(path: Path, frozen_layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["backbone"]
    return {k: v for k, v in state.items() if k.startswith(frozen_layers) and "running_" in k}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_patchtst_batchnorm_statistics_of_frozen_layers_stay_fixed(smoke, runs_dir, mode):
    train(
        smoke(
            "backbone=patchtst",
            "backbone.context_length=128",
            "backbone.patch_length=16",
            "backbone.patch_stride=16",
            "backbone.d_model=16",
            "backbone.ffn_dim=32",
            "unfreeze.last_n=1",
            f"unfreeze.frozen_mode={mode}",
            "experiment_name=frozen",
        )
    )
    _, (parent,), _ = runs_of(runs_dir, "frozen")
    out = Path(parent.data.tags["output_dir"])
    frozen = ("encoder.layers.0.", "encoder.layers.1.")  # last_n=1 trains encoder.layers.2 only
    head, partial = _bn_stats(out / "stage-head.pt", frozen), _bn_stats(out / "stage-partial.pt", frozen)
    assert len(head) == 8  # 2 layers x 2 BatchNorms x (mean, var)
    same = [torch.equal(head[k], partial[k]) for k in head]
    assert all(same) if mode == "eval" else not any(same)


def _ttm_partial(dropout: float = 0.5):
    model = build_classifier(backbone_conf(dropout=dropout, **TINY_TTM), num_channels=1, num_classes=2)
    rule = unfreeze_rule(r"encoder\.mlp_mixer_encoder\.mixers\.\d+\.mixer_layers\.\d+", last_n=1)
    _, selected = apply_stage(model, rule, scope="partial", stage="partial")
    return model, selected


def test_ttm_frozen_blocks_are_deterministic_in_training_mode():
    from ttm_experiments.models.unfreeze import freeze_frozen_modes

    torch.manual_seed(0)
    model, (trained,) = _ttm_partial()
    model.train()
    frozen_names = freeze_frozen_modes(model)
    mixers = dict(model.backbone.model.named_modules())
    frozen = mixers["encoder.mlp_mixer_encoder.mixers.0.mixer_layers.0"]
    assert not frozen.training and "backbone.model.encoder.mlp_mixer_encoder.mixers.0" in frozen_names
    dropouts = [m for m in trained.module.modules() if "Dropout" in type(m).__name__]
    assert dropouts and all(m.training for m in dropouts)  # dropout inside the trained block still acts
    outputs = []
    frozen.register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
    x = torch.randn(4, 128, 1)
    model(x.transpose(1, 2))
    model(x.transpose(1, 2))
    assert torch.equal(outputs[0], outputs[1])
    model.train()  # frozen_mode=train: the old behaviour, dropout acts in the frozen block
    outputs.clear()
    model(x.transpose(1, 2))
    model(x.transpose(1, 2))
    assert not torch.equal(outputs[0], outputs[1])
