"""Mixed precision: `trainer.amp` spellings, refusals where the device cannot, and the fp16 gradient scaler."""

from __future__ import annotations

import pytest
import torch

from ttm_experiments.config.schema import AmpMode, parse_amp
from ttm_experiments.errors import ConfigError


@pytest.mark.parametrize(
    "value, mode",
    [
        (False, AmpMode.off),
        ("False", AmpMode.off),
        (True, AmpMode.bf16),
        ("True", AmpMode.bf16),
        ("bf16", AmpMode.bf16),
        ("fp16", AmpMode.fp16),
    ],
)
def test_amp_spellings(value, mode):
    assert parse_amp(value) == mode


def test_amp_from_the_command_line_and_a_wrong_value(smoke):
    from ttm_experiments.config.spec import to_config

    assert to_config(smoke("trainer.amp=true")).trainer.amp == AmpMode.bf16  # the old boolean: bf16
    assert to_config(smoke()).trainer.amp == AmpMode.off
    assert to_config(smoke("trainer.amp=fp16")).trainer.amp == "fp16"
    with pytest.raises(ConfigError, match=r"trainer.amp='fp8'.*trainer.amp=bf16"):
        to_config(smoke("trainer.amp=fp8"))


def test_amp_refused_where_the_device_cannot(monkeypatch):
    from ttm_experiments.training.optim import check_amp

    with pytest.raises(ConfigError, match=r"trainer.amp=fp16 on trainer.device=cpu.*Fix: trainer.amp=false"):
        check_amp("fp16", torch.device("cpu"))
    assert check_amp("bf16", torch.device("cpu")) == AmpMode.bf16  # CPU autocast in bf16 is allowed
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(ConfigError, match=r"Tesla T4.*no bf16 support.*trainer.amp=fp16"):
        check_amp("bf16", torch.device("cuda"))
    assert check_amp("fp16", torch.device("cuda")) == AmpMode.fp16


def test_fp16_scaler_skips_an_overflowing_step_and_saves_its_state():
    from ttm_experiments.training.optim import Precision

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    precision = Precision(torch.device("cpu"), "fp16")  # GradScaler("cpu"): the scaler path runs on CPU
    before = [p.detach().clone() for p in model.parameters()]
    with precision.autocast():
        out = model(torch.randn(64, 4))
    assert out.dtype == torch.float16
    precision.step(out.float().sum(), optimizer, grad_clip=1.0)  # 64 rows x 65536: overflows fp16
    assert precision.scaler.get_scale() == 32768.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the step was skipped
    for _ in range(20):  # the scale backs off until a step goes through
        optimizer.zero_grad(set_to_none=True)  # as the loops do: the skipped step's Inf gradients go
        with precision.autocast():
            loss = model(torch.randn(64, 4)).float().mean()
        precision.step(loss, optimizer, grad_clip=1.0)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    again = Precision(torch.device("cpu"), "fp16")
    again.load_state_dict(precision.state_dict())
    assert again.scaler.get_scale() == precision.scaler.get_scale() == 32768.0
    assert Precision(torch.device("cpu"), "bf16").state_dict() is None


def test_fp16_run_shares_one_scaler_with_the_ssl_stages_and_checkpoints_it(smoke, monkeypatch):
    """The recipe on CPU with the device check lifted: both loops step through one Precision, last.pt holds it."""
    from ttm_experiments.cli.train import run_info
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training import recipe as recipe_mod
    from ttm_experiments.training.recipe import TrainRecipe, run_recipe

    saved = []
    monkeypatch.setattr(recipe_mod, "check_amp", lambda amp, device: parse_amp(amp))
    real_save = recipe_mod.resume.save_epoch
    monkeypatch.setattr(
        recipe_mod.resume,
        "save_epoch",
        lambda path, end, **kw: (saved.append(end.extra.get("scaler")), real_save(path, end, **kw)),
    )
    cfg = smoke("trainer.amp=fp16", "schedule=hybrid", "trainer.max_batches=2")
    recipe = TrainRecipe(to_config(cfg), run_info(cfg))
    outcome = run_recipe(recipe)
    assert recipe.ssl_runner.precision is recipe.trainer.precision is recipe.precision
    assert recipe.precision.scaler is not None and outcome.objective == outcome.objective
    assert saved and all(s is not None and "scale" in s for s in saved)
