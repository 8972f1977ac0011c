"""What a model knows of amplitude (models/amplitude.py): the training range a checkpoint records, the windows
outside it, and the invariance of a model whose head does not read amplitude (`backbone.scale_features=false`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.configs import TINY_TTM, backbone_conf
from ttm_experiments.models.amplitude import AmplitudeRange, window_stats


def _windows(n: int, dc: float, amp: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(128) / 12.8
    pulse = np.sin(2 * np.pi * 1.1 * t[None, :] + rng.uniform(0, 6, (n, 1)))
    return (dc + amp * pulse + 0.05 * amp * rng.standard_normal((n, 128)))[:, None, :].astype(np.float32)


def test_stats_are_the_scalers_own():
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig
    from tsfm_public.models.tinytimemixer.modeling_tinytimemixer import TinyTimeMixerStdScaler

    x = _windows(5, 150.0, 2.0)
    scaler = TinyTimeMixerStdScaler(TinyTimeMixerConfig(context_length=128, patch_length=16))
    data = torch.from_numpy(x).transpose(1, 2)  # [B, T, C]
    _, loc, scale = scaler(data, torch.ones_like(data))
    ours_loc, ours_log_scale = window_stats(x)
    assert np.allclose(ours_loc, loc.squeeze(1).numpy(), rtol=1e-5)
    assert np.allclose(np.exp(ours_log_scale), scale.squeeze(1).numpy(), rtol=1e-4)


def test_range_covers_its_windows_and_flags_other_units():
    train = _windows(50, 150.0, 2.0)
    rng = AmplitudeRange.of(train, chunk=7)  # chunks: the same range as one pass
    assert rng == AmplitudeRange.of(train) and rng.windows == 50
    assert not rng.outside(train).any()
    adc = train * 1000 + 1e6
    assert rng.outside(adc).all()
    zscored = (train - train.mean(axis=2, keepdims=True)) / train.std(axis=2, keepdims=True)
    assert rng.outside(zscored).all()
    mixed = np.concatenate([train[:3], adc[:2]])
    assert rng.outside(mixed).tolist() == [False, False, False, True, True]
    assert AmplitudeRange.from_dict(rng.as_dict()) == rng
    assert rng.describe().startswith("training location 14") or rng.describe().startswith("training location 15")
    # the margin: a slightly larger or smaller window of the same data passes, a factor of 3 in scale does not
    assert not rng.outside(train * 1.3 - 0.3 * 150).any() and rng.outside(train * 3 - 2 * 150).all()


def test_new_subjects_of_the_training_data_pass_and_other_units_do_not(smoke_run):
    splits = smoke_run.splits
    rng = AmplitudeRange.of(splits.train.signals)
    for part in (splits.val.signals, splits.test.signals):
        assert not rng.outside(part).any()
        assert rng.outside(part * 1000 + 1e6).all()
        assert rng.outside((part - part.mean(axis=2, keepdims=True)) / part.std(axis=2, keepdims=True)).all()


def _model(scale_features: bool):
    from ttm_experiments.models.backbones import build_classifier

    torch.manual_seed(0)
    model = build_classifier(backbone_conf(**TINY_TTM, scale_features=scale_features), num_channels=1, num_classes=2)
    if scale_features:  # a trained head's statistics, not the identity of a fresh BatchNorm
        model.head.scale_norm.running_mean.copy_(torch.tensor([150.0, 0.7]))
        model.head.scale_norm.running_var.copy_(torch.tensor([400.0, 0.25]))
    return model.eval()


def _probs(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(x)), dim=-1).numpy()


@pytest.mark.parametrize("a, b", [(0.5, -3.0), (1000.0, 1e6), (0.2, 0.0), (7.0, 25.0)])
def test_a_model_without_scale_features_gives_the_same_probabilities_for_a_x_plus_b(a, b):
    x = _windows(16, 150.0, 2.0, seed=1)
    model = _model(scale_features=False)
    base = _probs(model, x)
    moved = _probs(model, (x.astype(np.float64) * a + b).astype(np.float32))
    assert np.allclose(moved, base, atol=2e-4), np.abs(moved - base).max()


def test_invariance_ends_where_the_scalers_floor_begins():
    """The scaler adds 1e-5 to each window's variance: a window with a standard deviation near 0.003 (a signal
    in volts from a 12-bit ADC, say) is no longer scaled to unit variance, so the answer changes."""
    x = _windows(16, 150.0, 2.0, seed=1)  # sd about 1.4
    model = _model(scale_features=False)
    tiny = (x.astype(np.float64) * 1e-3).astype(np.float32)  # sd about 0.0014: variance below the floor
    assert np.abs(_probs(model, tiny) - _probs(model, x)).max() > 1e-3


def test_a_model_with_scale_features_answers_differently_in_other_units():
    x = _windows(16, 150.0, 2.0, seed=1)
    model = _model(scale_features=True)
    base = _probs(model, x)
    moved = _probs(model, (x.astype(np.float64) * 1000 + 1e6).astype(np.float32))
    assert np.abs(moved - base).max() > 1e-3
    # the amplitude features saturate the head: every window gets (almost) the same answer, whatever its shape
    assert moved[:, 1].std() < base[:, 1].std() / 10


def test_checkpoint_records_the_range_and_the_loaded_model_checks_against_it(tmp_path):
    from ttm_experiments.models.checkpoint import save_classifier
    from ttm_experiments.models.inference import load_classifier

    train = _windows(40, 150.0, 2.0)
    for scale_features in (True, False):
        path = tmp_path / f"sf-{scale_features}.pt"
        model = _model(scale_features)
        save_classifier(
            path, model, "full", ("poor", "good"), window_s=10.0, amplitude=AmplitudeRange.of(train).as_dict()
        )
        trained = load_classifier(path)
        assert trained.uses_amplitude is scale_features
        assert trained.amplitude == AmplitudeRange.of(train)
        assert trained.outside_training_amplitude(train * 1000 + 1e6).all()
        assert not trained.outside_training_amplitude(train).any()
