"""Checkpoints (ttm_experiments/models/checkpoint.py): strict round trips, Hugging Face directories, and checkpoints
that do not fit the model, refused naming the difference."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.configs import TINY_TTM, backbone_conf
from ttm_experiments.errors import CheckpointError
from ttm_experiments.models.backbones import build_classifier
from ttm_experiments.models.checkpoint import load_backbone_weights, save_classifier

TINY = backbone_conf(**TINY_TTM, dropout=0.1, head_hidden=8)


def test_checkpoint_of_another_architecture_shows_both(tmp_path):
    model = build_classifier(TINY, num_channels=1, num_classes=2)
    save_classifier(tmp_path / "ckpt.pt", model, "full", ("poor", "good"))
    other = build_classifier(backbone_conf(**{**TINY_TTM, "d_model": 32}, head_hidden=8), num_channels=1, num_classes=2)
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(other.backbone, str(tmp_path / "ckpt.pt"))
    assert "d_model: model 32  checkpoint 16" in str(err.value)


def test_truncated_checkpoint(tmp_path):
    model = build_classifier(TINY, num_channels=1, num_classes=2)
    path = tmp_path / "ckpt.pt"
    save_classifier(path, model, "full", ("poor", "good"))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_backbone_weights(model.backbone, str(path))


def test_suite_checkpoint_round_trip_is_strict_and_exact(tmp_path):
    source = build_classifier(TINY, num_channels=1, num_classes=2)
    save_classifier(tmp_path / "ckpt.pt", source, "full", ("poor", "good"))
    target = build_classifier(TINY, num_channels=1, num_classes=2)
    assert load_backbone_weights(target.backbone, str(tmp_path / "ckpt.pt")) == "ssl"
    for (name, a), (_, b) in zip(source.backbone.state_dict().items(), target.backbone.state_dict().items()):
        assert torch.equal(a, b), name


def test_hugging_face_directory_loads_the_encoder_of_a_forecasting_checkpoint(tmp_path):
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    config = TinyTimeMixerConfig(
        context_length=128,
        patch_length=16,
        patch_stride=16,
        d_model=16,
        num_layers=2,
        adaptive_patching_levels=2,
        prediction_length=16,
        num_input_channels=1,
    )
    TinyTimeMixerForPrediction(config).save_pretrained(tmp_path / "ttm")
    target = build_classifier(TINY, num_channels=1, num_classes=2)
    assert load_backbone_weights(target.backbone, str(tmp_path / "ttm")) == "pretrained"
    reference = TinyTimeMixerForPrediction.from_pretrained(tmp_path / "ttm").backbone.state_dict()
    for name, tensor in target.backbone.model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    wrong = build_classifier(
        backbone_conf(**{**TINY_TTM, "context_length": 256}, head_hidden=8), num_channels=1, num_classes=2
    )
    with pytest.raises(CheckpointError, match="context_length: model 256  checkpoint 128"):
        load_backbone_weights(wrong.backbone, str(tmp_path / "ttm"))


def test_checkpoint_missing_a_tensor_is_refused_naming_it(tmp_path):
    model = build_classifier(TINY, num_channels=1, num_classes=2)
    path = tmp_path / "ckpt.pt"
    save_classifier(path, model, "full", ("poor", "good"))
    ckpt = torch.load(path, weights_only=True)
    dropped = next(iter(ckpt["backbone"]))
    del ckpt["backbone"][dropped]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"does not fit the backbone.*{dropped}"):
        load_backbone_weights(build_classifier(TINY, num_channels=1, num_classes=2).backbone, str(path))
