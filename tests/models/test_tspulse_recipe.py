"""`backbone.head=tspulse` and `experiment=tspulse_recipe`: the head is tsfm_public's own decoder + classification
head (the same logits as `TSPulseForClassification` with the same weights), its options reach the model, exactly the
patch encodings, the decoder and the head get gradients, the snapshot's weights load (the decoder's where they fit)
and the frozen ones are unchanged after a run; keys that could not act are refused. The hub is a fake cache written
with the library's own save_pretrained (tests/models/test_hub.py): no download."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.configs import compose_config
from tests.models.test_hub import TSP, TSP_REV, _snapshot_backbone, hub, hub_dir  # noqa: F401  (fixtures)
from ttm_experiments.config.spec import to_config
from ttm_experiments.errors import ConfigError
from ttm_experiments.models.pretrained import build_model
from ttm_experiments.models.unfreeze import apply_stage

RECIPE = ("experiment=tspulse_recipe",)
RANDOM = (*RECIPE, "backbone.pretrained_path=null")
ENCODINGS = {
    f"backbone.model.{m}_encoding.patcher.{p}" for m in ("time", "fft") for p in ("weight", "bias")
}  # the recipe's trainable part of the encoder


def _config(*overrides: str):
    return to_config(compose_config(list(overrides)))


def _model(*overrides: str):
    c = _config(*overrides)
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    return c, model, init


@pytest.mark.parametrize(
    "extra",
    [
        (),  # the recipe's options (Heartbeat's)
        (
            "backbone.tspulse_head.channel_virtual_expand_scale=2",
            "backbone.tspulse_head.mask_ratio=0.3",
            "backbone.tspulse_head.gated_attention_activation=sigmoid",
            "backbone.tspulse_head.head_reduce_d_model=2",
        ),
    ],
)
def test_the_head_is_tspulse_for_classifications_own(extra):
    from tsfm_public.models.tspulse import TSPulseConfig
    from tsfm_public.models.tspulse.modeling_tspulse import (
        TSPulseDecoderWithClassificationHead,
        TSPulseForClassification,
    )

    c, model, _ = _model(*RANDOM, *extra)
    assert type(model.head.decoder_with_head) is TSPulseDecoderWithClassificationHead
    config = TSPulseConfig.from_dict(json.loads(model.head.spec))
    h = c.backbone.tspulse_head
    assert (config.head_gated_attention_activation, config.decoder_mode, config.head_reduce_d_model) == (
        h.gated_attention_activation.value,
        h.decoder_mode.value,
        h.head_reduce_d_model,
    )
    assert (config.channel_virtual_expand_scale, config.mask_ratio, config.num_targets) == (
        h.channel_virtual_expand_scale,
        h.mask_ratio,
        2,
    )
    # the library's classifier with our weights (strict: the same modules) gives the same logits
    reference = TSPulseForClassification(config)
    reference.backbone.load_state_dict(model.backbone.model.state_dict())
    reference.decoder_with_head.load_state_dict(model.head.decoder_with_head.state_dict())
    model.eval(), reference.eval()
    x = torch.randn(5, 1, 512)
    with torch.no_grad():
        expected = reference(past_values=x.transpose(1, 2)).prediction_outputs
        assert torch.allclose(model(x), expected, atol=1e-5)
        hidden = model.backbone(x)[0]
    assert hidden.shape[1] == h.channel_virtual_expand_scale  # the virtual channels reach the encoder


@pytest.mark.parametrize("mask_ratio,differs", [("null", False), ("0.3", True)])
def test_tspulse_masks_training_windows_only_with_a_mask_ratio(mask_ratio, differs):
    _, model, _ = _model(
        *RANDOM, f"backbone.tspulse_head.mask_ratio={mask_ratio}", "backbone.dropout=0", "backbone.head_dropout=0"
    )
    x = torch.randn(4, 1, 512)
    torch.manual_seed(1)
    with torch.no_grad():
        model.train()  # no dropout (0): two passes differ only if TSPulse masks
        first, second = model(x), model(x)
        model.eval()
        assert torch.equal(model(x), model(x))  # never in evaluation
    assert (not torch.equal(first, second)) == differs


def test_gradients_reach_exactly_the_patch_encodings_the_decoder_and_the_head():
    c, model, _ = _model(*RANDOM)
    stage = c.schedule.stages[0]
    apply_stage(model, c.unfreeze, scope=stage.train.value, stage=stage.name)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 512)), torch.tensor([0, 1] * 4)).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    head = {n for n, _ in model.named_parameters() if n.startswith("head.")}
    assert with_grad == ENCODINGS | head
    assert {n.split(".")[2] for n in head} == {"decoder", "head"}  # TSPulse's decoder and its classification head
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("backbone.model.") for n in frozen) and not frozen & ENCODINGS


def test_the_snapshot_loads_into_the_encoder_and_where_it_fits_the_decoder(hub):  # noqa: F811
    _, model, init = _model(*RECIPE)
    assert (init.kind, init.source) == ("pretrained", f"{TSP}@{TSP_REV}")
    expected = _snapshot_backbone(hub, (TSP, TSP_REV))
    got = model.backbone.model.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    files, commits = hub
    snapshot = load_file(
        str(files / f"models--{TSP.replace('/', '--')}" / "snapshots" / commits[(TSP, TSP_REV)] / "model.safetensors")
    )
    theirs = {
        k.removeprefix("decoder_with_head."): v for k, v in snapshot.items() if k.startswith("decoder_with_head.")
    }
    ours = model.head.decoder_with_head.state_dict()
    shared = [k for k in ours if k in theirs and ours[k].shape == theirs[k].shape]
    # the snapshot's decoder (common_channel) shares its patch and feature mixers with the recipe's (mix_channel)
    assert any(k.startswith("decoder.") for k in shared) and len(shared) < len(ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in shared)
    assert init.dropped_tensors == len(theirs) - len(shared)  # what the classifier does not use, nothing more


@pytest.mark.parametrize(
    "overrides,words",
    [
        (("debug=tiny", *RECIPE), "backbone=ttm_tiny is ttm. Fix: backbone=tspulse_r1"),
        (("backbone.head=tspulse",), "backbone=ttm_1024 is ttm"),
        (("backbone.tspulse_head.mask_ratio=0.3",), "backbone.head=suite, so it would do nothing"),
        ((*RANDOM, "backbone.scale_features=true"), "TSPulse's head reads each window's location and scale"),
        ((*RANDOM, "backbone.head_hidden=32"), "the suite head's width; TSPulse's head does not read it"),
        ((*RANDOM, "schedule=linear_probe", "optim.lr_find=false"), "it has no head"),
        ((*RANDOM, "schedule=head_only", "backbone.tspulse_head.mask_ratio=0.3"), "it would never mask"),
        ((*RANDOM, "backbone.tspulse_head.mask_ratio=1.5"), r"mask_ratio=1.5 must be in \(0, 1\)"),
        ((*RANDOM, "backbone.tspulse_head.channel_virtual_expand_scale=0"), "must be >= 1"),
        (
            (
                *RANDOM,
                "schedule=pretrain",
                "optim.lr_find=false",
                "backbone.tspulse_head.channel_virtual_expand_scale=2",
            ),
            "which the self-supervised stages",
        ),
    ],
)
def test_head_keys_that_cannot_act_are_refused_before_anything_runs(overrides, words):
    with pytest.raises(ConfigError, match=words):
        _config(*overrides)


def test_a_recipe_run_from_the_snapshot_keeps_the_frozen_weights_and_serves_its_model(hub, tmp_path):  # noqa: F811
    from tests.helpers.runs import runs_of
    from ttm_experiments.cli.train import train
    from ttm_experiments.models.inference import load_classifier

    runs = tmp_path / "runs"
    train(
        compose_config(
            [
                "debug=tiny",  # then the recipe's backbone back: debug=tiny swaps in ttm_tiny
                *RECIPE,
                "backbone=tspulse_r1",
                f"paths.runs_dir={runs}",
                "experiment_name=recipe",
                "trainer.max_epochs_per_stage=2",
                "optim.lr_find_steps=10",
                "trainer.num_threads=1",
            ]
        )
    )
    _, (run,), _ = runs_of(runs, "recipe")
    assert run.info.status == "FINISHED" and run.data.tags["init"] == "pretrained"
    path = next(runs.rglob("best.pt"))
    best = torch.load(path, weights_only=True)
    snapshot = _snapshot_backbone(hub, (TSP, TSP_REV))
    trained = {f"backbone.model.{k}" for k in snapshot} & ENCODINGS
    assert len(trained) == 4
    for name, tensor in snapshot.items():
        same = torch.equal(best["backbone"][name], tensor)
        assert same != (f"backbone.model.{name}" in trained), name  # frozen: unchanged; the encodings: trained
    # the run's model (what MLflow serves) is the same classifier, rebuilt from its recorded config
    served = load_classifier(path)
    assert served.uses_amplitude  # TSPulse's head reads location and scale: units matter
    _, model, _ = _model(*RECIPE)
    model.backbone.model.load_state_dict(best["backbone"])
    model.head.load_state_dict(best["head"])
    model.eval()
    x = torch.randn(3, 1, 512)
    with torch.no_grad():
        assert torch.allclose(served.model(x), model(x), atol=1e-6)
