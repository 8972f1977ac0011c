"""Chronos-Bolt as a probe-only backbone, against a Hugging Face cache laid out as huggingface_hub lays it, written by
chronos-forecasting's own `ChronosBoltModelForForecasting(...).save_pretrained` in the public tiny shape (the hub is
the one thing mocked: no network here). Pins: every tensor of the snapshot is in the model unchanged; the probe's
features are the pipeline's own `.embed()` pooled; trained schedules and unreadable window lengths are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.configs import compose_config
from tests.helpers.runs import runs_of
from tests.models.test_hub import _config, _write_snapshot
from ttm_experiments.errors import CheckpointError, ConfigError
from ttm_experiments.models.backbones import amplitude_features, pool_patches
from ttm_experiments.models.chronos import TIED
from ttm_experiments.models.pretrained import build_model

REPO = "amazon/chronos-bolt-tiny"
PRESET = ("backbone=chronos_bolt_tiny", "schedule=linear_probe")
TINY_PARAMS = 8_652_672  # the public tiny shape below (published: 9 M)


def _public_tiny():
    """Chronos-Bolt Tiny as chronos-forecasting builds it from a config.json of the public shape (d_model 256, 4 + 4
    layers, 4 heads of 64, d_ff 1024, patch 16, context 2048, [REG] token), spelled out here, not from the suite."""
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

    config = T5Config(
        d_model=256,
        d_ff=1024,
        d_kv=64,
        num_heads=4,
        num_layers=4,
        num_decoder_layers=4,
        feed_forward_proj="relu",
        dense_act_fn="relu",
        is_gated_act=False,
        dropout_rate=0.1,
        vocab_size=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        architectures=["ChronosBoltModelForForecasting"],
        chronos_pipeline_class="ChronosBoltPipeline",
        chronos_config={
            "context_length": 2048,
            "prediction_length": 64,
            "input_patch_size": 16,
            "input_patch_stride": 16,
            "quantiles": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            "use_reg_token": True,
        },
    )
    return ChronosBoltModelForForecasting(config)


@pytest.fixture(scope="module")
def chronos_hub(tmp_path_factory):
    torch.manual_seed(3)
    hub = tmp_path_factory.mktemp("hf_home_chronos") / "hub"
    commit = _write_snapshot(hub, REPO, "main", _public_tiny())
    return hub, hub / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit, commit


@pytest.fixture
def hub(chronos_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(chronos_hub[0]))
    return chronos_hub


def _windows(n: int, channels: int = 1, length: int = 512) -> np.ndarray:
    """Windows of other offsets and scales (the instance norm must see them)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, channels, length)).cumsum(-1) * rng.uniform(0.1, 50, (n, channels, 1))
    return (x + rng.uniform(-100, 100, (n, channels, 1))).astype(np.float32)


def test_the_snapshot_loads_every_tensor_exactly(hub):
    _, folder, commit = hub
    c = _config(*PRESET)
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    assert (init.kind, init.source, init.commit, init.dropped_tensors) == ("pretrained", f"{REPO}@main", commit, 0)
    saved = load_file(str(folder / "model.safetensors"))
    got = model.backbone.model.state_dict()
    # save_pretrained writes shared.weight once for T5's two tied token embeddings: every other tensor is in the file
    assert set(got) == set(saved) | set(TIED) and not set(TIED) & set(saved)
    assert all(torch.equal(got[k], saved[k]) for k in saved)
    assert all(torch.equal(got[target], saved[origin]) for target, origin in TIED.items())
    assert sum(p.numel() for p in model.backbone.parameters()) == TINY_PARAMS


def test_the_probe_features_are_the_pipelines_own_embed_pooled(hub):
    """The library's own loading (BaseChronosPipeline.from_pretrained on the snapshot) and its `.embed()`: the probe's
    features are its embeddings (every patch and [REG]) pooled as the suite pools, plus its loc and scale."""
    from chronos import BaseChronosPipeline

    from ttm_experiments.training.linear_probe import embed

    _, folder, _ = hub
    model, _ = build_model(_config(*PRESET).backbone, num_channels=1, num_classes=2)
    pipeline = BaseChronosPipeline.from_pretrained(str(folder))
    x = _windows(6)
    ours = embed(model.backbone, x, batch_size=len(x), device=torch.device("cpu"), amplitude=True)
    emb, (loc, scale) = pipeline.embed(torch.from_numpy(x[:, 0]))
    assert emb.shape == (6, 512 // 16 + 1, 256)
    theirs = torch.cat([pool_patches(emb[:, None]), amplitude_features(loc[:, None], scale[:, None])], dim=-1)
    assert np.array_equal(ours, theirs.numpy())


def test_each_channel_is_embedded_on_its_own():
    from chronos import ChronosBoltPipeline

    c = _config("backbone=chronos_bolt_tiny", "backbone.pretrained_path=null", "schedule=linear_probe")
    torch.manual_seed(0)
    model, init = build_model(c.backbone, num_channels=2, num_classes=2)
    assert init.kind == "random" and sum(p.numel() for p in model.backbone.parameters()) == TINY_PARAMS
    pipeline = ChronosBoltPipeline(model.backbone.model)
    x = torch.from_numpy(_windows(3, channels=2))
    model.eval()
    with torch.no_grad():
        hidden, loc, scale = model.backbone(x)
    assert hidden.shape == (3, 2, 33, 256)
    for ch in range(2):
        emb, (ch_loc, ch_scale) = pipeline.embed(x[:, ch])
        torch.testing.assert_close(hidden[:, ch], emb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loc[:, ch], ch_loc)
        torch.testing.assert_close(scale[:, ch], ch_scale)


@pytest.mark.parametrize(("size", "params"), [("mini", 21_236_096), ("small", 47_718_016)])
def test_each_preset_builds_a_random_model_of_the_published_size(size, params):
    """21 and 48 M published: the presets' keys (with d_kv 64) give those sizes; the encoder blocks are listed."""
    from ttm_experiments.models.unfreeze import find_blocks

    c = _config(f"backbone=chronos_bolt_{size}", "backbone.pretrained_path=null", "schedule=linear_probe")
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    assert init.kind == "random" and sum(p.numel() for p in model.backbone.parameters()) == params
    assert len(find_blocks(model.backbone.model, c.unfreeze)) == c.backbone.num_layers


@pytest.mark.parametrize("schedule", ["progressive", "head_only", "full", "pretrain"])
def test_every_trained_schedule_is_refused_before_the_data(schedule, monkeypatch, tmp_path):
    from ttm_experiments.training import recipe

    def no_data(c):
        raise AssertionError("the data was read before the refusal")

    monkeypatch.setattr(recipe, "load_splits", no_data)
    c = _config("backbone=chronos_bolt_tiny", "backbone.pretrained_path=null", f"schedule={schedule}")
    with pytest.raises(ConfigError, match="Fix: schedule=linear_probe") as err:
        recipe.TrainRecipe(c, recipe.RunInfo(output_dir=tmp_path, config_yaml="")).setup()
    assert "\n" not in str(err.value) and "probe" in str(err.value) and f"schedule={schedule}" in str(err.value)


@pytest.mark.parametrize(("length", "fix"), [(500, 496), (4096, 2048)])
def test_a_window_length_chronos_cannot_read_whole_is_refused(length, fix):
    with pytest.raises(ConfigError, match=f"Fix: backbone.context_length={fix} ") as err:
        _config(*PRESET, f"backbone.context_length={length}")
    assert "\n" not in str(err.value) and ("pad" in str(err.value) and "last 2048" in str(err.value))


def test_a_snapshot_of_another_size_is_refused_with_both_values(hub):
    c = _config("backbone=chronos_bolt_mini", f"backbone.pretrained_path={REPO}", "schedule=linear_probe")
    with pytest.raises(CheckpointError, match="backbone.d_model: config 384, checkpoint 256") as err:
        build_model(c.backbone, num_channels=1, num_classes=2)
    assert "num_attention_heads: config 8, checkpoint 4" in str(err.value)


def test_a_missing_tensor_is_refused_and_a_stray_lm_head_left_out(hub, tmp_path):
    """The library's own from_pretrained would leave a missing patch embedding at random without a word (its
    `_keys_to_ignore_on_load_missing`); the suite's load names it. An lm_head.weight, which the library ignores on
    load, is left out and counted."""
    from safetensors.torch import save_file

    _, folder, _ = hub
    state = load_file(str(folder / "model.safetensors"))
    config = (folder / "config.json").read_text()
    for name, tensors in {
        "missing": {k: v for k, v in state.items() if k != "input_patch_embedding.hidden_layer.weight"},
        "extra": {**state, "lm_head.weight": torch.zeros(2, 256)},
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config)
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
    c = _config(*PRESET, f"backbone.pretrained_path={tmp_path / 'missing'}", "backbone.revision=null")
    with pytest.raises(CheckpointError, match="input_patch_embedding.hidden_layer.weight"):
        build_model(c.backbone, num_channels=1, num_classes=2)
    c = _config(*PRESET, f"backbone.pretrained_path={tmp_path / 'extra'}", "backbone.revision=null")
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    assert init.dropped_tensors == 1 and "lm_head.weight" not in model.backbone.model.state_dict()
    got = model.backbone.model.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_a_checkpoint_that_is_not_chronos_bolt_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5ForConditional"]}))
    c = _config(*PRESET, f"backbone.pretrained_path={tmp_path}", "backbone.revision=null")
    with pytest.raises(CheckpointError, match="not a Chronos-Bolt checkpoint.*Fix: amazon/chronos-bolt-tiny"):
        build_model(c.backbone, num_channels=1, num_classes=2)


def test_inspect_lists_the_encoder_blocks_and_says_probe_only():
    from ttm_experiments.cli.inspect_blocks import format_text, inspect_model

    cfg = compose_config(["backbone=chronos_bolt_tiny", "backbone.pretrained_path=null"], config_name="inspect")
    info = inspect_model(cfg)
    assert info["probe_only"] and info["selected"] == [] and info["trainable_params"] == 0
    assert [b["name"] for b in info["blocks"]] == [f"encoder.block.{i}" for i in range(4)]
    text = format_text(info)
    assert "schedule=linear_probe" in text and "no schedule unfreezes these blocks" in text and "*" not in text


@pytest.mark.slow
def test_a_probe_run_logs_to_mlflow_and_reuses_the_features_of_the_same_weights(hub, smoke, runs_dir):
    """Two seeds over the snapshot's weights: the second run reads every split's features from the stage cache."""
    from ttm_experiments.cli.train import train

    _, _, commit = hub
    for seed in (0, 1):
        train(smoke(*PRESET, f"seed={seed}", "trainer.num_threads=1"))
    _, (first, second), _ = runs_of(runs_dir, "ttm-ppg-quality-smoke")
    for run in (first, second):
        tags = run.data.tags
        assert (tags["backbone"], tags["schedule"], tags["init"]) == ("chronos_bolt_tiny", "linear_probe", "pretrained")
        assert (tags["backbone.source"], tags["backbone.commit"]) == (f"{REPO}@main", commit)
        assert np.isfinite(run.data.metrics["test/auroc"]) and run.data.metrics["probe/features_dim"] == 2 * 256
    assert first.data.tags["probe.features"] == "train=computed,val=computed,test=computed"
    assert second.data.tags["probe.features"] == "train=reused,val=reused,test=reused"
