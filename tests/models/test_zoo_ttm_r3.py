"""TTM r3 presets against a Hugging Face cache laid out as huggingface_hub does it, written by granite-tsfm's own
`save_pretrained` (the hub itself is the one thing mocked: no network here). Every backbone tensor must equal the
saved one after loading and after a head-only optimiser step, so a re-initialisation on load is caught."""

from __future__ import annotations

import pytest
import torch

from tests.models.test_hub import TSP, TSP_REV, _config, _snapshot_backbone, _tspulse, _ttm, _write_snapshot
from ttm_experiments.errors import CheckpointError
from ttm_experiments.models.pretrained import build_model
from ttm_experiments.models.unfreeze import apply_stage

R3 = "ibm-granite/granite-timeseries-ttm-r3"
# preset -> revision (granite-tsfm 0.3.11 model_paths_config/ttm.yaml keys); shapes as the presets declare them
R3_PRESETS = {"ttm_r3_1024": "1024-96-r3", "ttm_r3_1024_lite": "1024-96-lite-r3"}


@pytest.fixture(scope="module")
def r3_hub(tmp_path_factory):
    from tsfm_public.models.tinytimemixer import TinyTimeMixerForDecomposedPrediction

    torch.manual_seed(1)
    hub = tmp_path_factory.mktemp("hf_home_r3") / "hub"
    commits = {(R3, rev): _write_snapshot(hub, R3, rev, _ttm(1024, 128, 384, 256)) for rev in R3_PRESETS.values()}
    dec = TinyTimeMixerForDecomposedPrediction(_ttm(512, 64, 192, 128).config)
    commits[(R3, "512-96-dec-512-r3")] = _write_snapshot(hub, R3, "512-96-dec-512-r3", dec)
    return hub, commits


@pytest.fixture
def hub(r3_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(r3_hub[0]))
    return r3_hub


def _head_only_step_keeps_backbone(model, c, expected: dict, *, context: int) -> None:
    """One head-only optimiser step: the head moves, every backbone tensor still equals the saved one."""
    apply_stage(model, c.unfreeze, scope="head", stage="head_only")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(not p.requires_grad for p in model.backbone.model.parameters()), (
        "head_only must leave the backbone frozen"
    )
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    logits = model(torch.randn(4, 1, context))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    opt.step()
    assert any(not torch.equal(head_before[k], v) for k, v in model.head.state_dict().items())
    after = model.backbone.model.state_dict()
    assert all(torch.equal(after[k], expected[k]) for k in expected)


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(R3_PRESETS))
def test_r3_preset_loads_every_tensor_and_head_only_training_leaves_them(hub, preset):
    c = _config(f"backbone={preset}")
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    assert (init.kind, init.source) == ("pretrained", f"{R3}@{R3_PRESETS[preset]}")
    expected = _snapshot_backbone(hub, (R3, R3_PRESETS[preset]))
    got = model.backbone.model.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)

    _head_only_step_keeps_backbone(model, c, expected, context=1024)


def test_a_dec_revision_is_refused_naming_the_decomposed_model(hub):
    c = _config("backbone=ttm_r3_512_dec")
    with pytest.raises(CheckpointError) as err:
        build_model(c.backbone, num_channels=1, num_classes=2)
    msg = str(err.value)
    assert "TinyTimeMixerForDecomposedPrediction" in msg and "ttm_r3_1024" in msg and "-dec-" in msg


def test_tspulse_loads_every_tensor_and_head_only_training_leaves_them(tmp_path, monkeypatch):
    from huggingface_hub import constants

    torch.manual_seed(2)
    hub_dir = (tmp_path / "hub", {})
    hub_dir[1][(TSP, TSP_REV)] = _write_snapshot(hub_dir[0], TSP, TSP_REV, _tspulse())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_dir[0]))
    c = _config("backbone=tspulse_r1")
    model, init = build_model(c.backbone, num_channels=1, num_classes=2)
    assert init.kind == "pretrained"
    expected = _snapshot_backbone(hub_dir, (TSP, TSP_REV))
    got = model.backbone.model.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    _head_only_step_keeps_backbone(model, c, expected, context=512)
