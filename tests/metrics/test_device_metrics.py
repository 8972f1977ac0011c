"""The epoch metrics computed in torch (a GPU run's) against scikit-learn's (metrics.classification_metrics).

Run on CPU tensors: the torch code is the same on any device. For the same probabilities the two must agree to
float64 rounding, with the same keys in the same order, and leave AUROC/AUPRC out in the same cases.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from ttm_experiments.metrics.classification import classification_metrics
from ttm_experiments.metrics.on_device import classification_metrics_on_device

NAMES = {2: ("poor", "good"), 3: ("a", "b", "c"), 4: ("a", "b", "c", "d")}


def _case(k: int, n: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)).astype(np.float32)
    if ties:  # rounded logits: many windows share a score (the tie handling of AUROC and AP)
        logits[: n // 2] = np.round(logits[: n // 2])
    return labels, logits


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize(("n", "ties"), [(9, False), (300, True), (2000, False), (2000, True)])
def test_same_metrics_as_scikit_learn(k, n, ties):
    labels, logits = _case(k, n, seed=k * 1000 + n, ties=ties)
    logits_t = torch.from_numpy(logits)
    # the same float32 probabilities on both sides (scipy's softmax may differ from torch's in the last bit)
    probs = torch.softmax(logits_t, dim=1).numpy()
    expected = classification_metrics(labels, probs, NAMES[k])
    got = classification_metrics_on_device(torch.from_numpy(labels), logits_t, NAMES[k])
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=0, abs=1e-12), key
    for key in expected.keys() - {"auroc", "auprc"}:
        assert got[key] == expected[key], key  # ratios of counts: exact


def test_extra_values_come_first_and_unchanged():
    labels, logits = _case(2, 50, seed=1, ties=False)
    loss = torch.tensor(0.123456789, dtype=torch.float32)
    got = classification_metrics_on_device(
        torch.from_numpy(labels), torch.from_numpy(logits), NAMES[2], extra={"loss": loss}
    )
    assert next(iter(got)) == "loss" and got["loss"] == float(loss)


def test_a_missing_class_leaves_auroc_out_with_a_warning(caplog):
    labels = np.zeros(20, dtype=np.int64)
    logits = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        got = classification_metrics_on_device(torch.from_numpy(labels), torch.from_numpy(logits), NAMES[2])
    expected = classification_metrics(labels, torch.softmax(torch.from_numpy(logits), 1).numpy(), NAMES[2])
    assert "auroc" not in got and "auprc" not in got and "acc/good" not in got
    assert got == expected
    assert "no sample of class(es) ['good']" in caplog.text


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"logits have shape \(5, 3\), expected \(5, 2\)"):
        classification_metrics_on_device(torch.zeros(5, dtype=torch.long), torch.zeros(5, 3), NAMES[2])


def test_the_trainer_takes_the_device_path_on_cuda():
    """Trainer._metrics on a CUDA device computes in torch; with the device swapped for a stand-in (there is no
    GPU here, and the torch code runs on CPU tensors) it gives what the CPU path gives, loss included."""
    from ttm_experiments.training import loop

    labels, logits = _case(2, 400, seed=3, ties=False)
    trainer = loop.Trainer.__new__(loop.Trainer)  # only _metrics: no data, no model
    trainer.class_names = NAMES[2]
    trainer.loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.6, 2.5]))
    y, x = torch.from_numpy(labels), torch.from_numpy(logits)
    trainer.device = torch.device("cpu")
    on_host = trainer._metrics(x, y)
    trainer.device = torch.device("cuda")  # stand-in: routes to the torch metrics
    on_device = trainer._metrics(x, y)
    assert list(on_device) == list(on_host)
    assert on_device["loss"] == on_host["loss"]
    for key, value in on_host.items():
        assert on_device[key] == pytest.approx(value, abs=1e-6), key  # softmax: scipy vs torch rounding
