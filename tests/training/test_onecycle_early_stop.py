"""OneCycle and early stopping as a run uses them: the rate every optimizer step of a stage actually used (read by a
torch optimizer hook, not recomputed), the same rates after a resume, and the epoch chosen on validation loss."""

from __future__ import annotations

import logging
import math

import pytest
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import train
from ttm_experiments.errors import ConfigError

# ttm_tiny, one full stage (head at optim.lr, every backbone group at 0.3 x), 4 epochs
FULL = ("schedule=full", "trainer.max_epochs_per_stage=4", "trainer.num_threads=1", "optim.lr=1e-3")


@pytest.fixture
def rates():
    """The rate of each parameter group at every optimizer step of the process while the test runs:
    a list of {group name: lr} in step order."""
    seen: list[dict[str, float]] = []

    def hook(optimizer, args, kwargs):
        seen.append({g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)})

    handle = register_optimizer_step_pre_hook(hook)
    yield seen
    handle.remove()


def _column(seen: list[dict[str, float]], group: str) -> list[float]:
    return [row[group] for row in seen]


def test_a_onecycle_stage_rises_to_each_groups_rate_then_falls(smoke, runs_dir, rates):
    # warm-up over a quarter of 4 epochs = the first epoch: OneCycleLR's peak then falls on a step (the last of it)
    train(smoke(*FULL, "optim.scheduler=onecycle", "optim.warmup_frac=0.25", "experiment_name=oc"))
    _, (run,), _ = runs_of(runs_dir, "oc")
    assert run.data.params["optim.scheduler"] == "onecycle"
    steps = len(rates)
    assert steps >= 8 and steps % 4 == 0  # 4 epochs of the same number of batches, at least 2
    head = _column(rates, "head")
    top = max(range(steps), key=head.__getitem__)
    assert head[top] == pytest.approx(1e-3)  # the peak is the head group's own rate (optim.lr x head_lr_scale 1.0)
    assert top == steps // 4 - 1  # reached after optim.warmup_frac of the stage's steps
    assert head[0] == pytest.approx(1e-3 / 25)  # torch's div_factor
    assert all(a < b for a, b in zip(head[:top], head[1 : top + 1]))  # rises ...
    assert all(a > b for a, b in zip(head[top:], head[top + 1 :]))  # ... then falls
    # every backbone group (its blocks and backbone.other) peaks at its own rate, optim.lr x backbone_lr_scale 0.3
    # (no layer decay from random weights), in the same step
    backbone = [g for g in rates[0] if g != "head"]
    assert len(backbone) >= 2 and "backbone.other" in backbone
    for group in backbone:
        column = _column(rates, group)
        assert max(column) == pytest.approx(3e-4) and column.index(max(column)) == top
        assert column == pytest.approx([r * 0.3 for r in head])


def test_the_default_schedule_is_still_warmup_then_cosine(smoke, runs_dir, rates):
    train(smoke(*FULL, "experiment_name=wc"))
    _, (run,), _ = runs_of(runs_dir, "wc")
    assert run.data.params["optim.scheduler"] == "warmup_cosine"
    head, steps = _column(rates, "head"), len(rates)
    warmup = max(1, int(steps * 0.1))  # optim.warmup_frac's default
    expected = [
        1e-3 * ((s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))
        for s in range(steps)
    ]
    assert head == pytest.approx(expected)


def test_a_resumed_onecycle_stage_continues_the_same_rates(smoke, runs_dir, rates):
    from ttm_experiments.cli.train import run_info
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training.recipe import TrainRecipe

    args = (*FULL, "optim.scheduler=onecycle", "optim.warmup_frac=0.25")
    train(smoke(*args, "experiment_name=whole"))
    whole = list(rates)
    rates.clear()
    cfg = smoke(*args, "experiment_name=cut")
    recipe = TrainRecipe(to_config(cfg), run_info(cfg))
    recipe.setup()
    original, calls = recipe._checkpoint, []

    def checkpoint_then_interrupt(*a, **k):  # Ctrl-C right after the second epoch's checkpoint
        original(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    recipe._checkpoint = checkpoint_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        recipe.train()
    recipe.release()
    done = len(rates)
    assert 0 < done < len(whole)
    train(smoke(*args, "experiment_name=cut", f"resume={recipe.info.output_dir}"))
    # the second half from the restored OneCycleLR, not a new cycle: every group's rate at every step as uninterrupted
    assert len(rates) == len(whole) and [sorted(r) for r in rates] == [sorted(r) for r in whole]
    for group in whole[0]:
        assert _column(rates, group) == pytest.approx(_column(whole, group))


def test_selection_and_early_stopping_on_validation_loss(smoke, runs_dir, caplog):
    # head_only capped at 8 epochs, a rate at which the validation loss falls, then rises (deterministic on CPU)
    with caplog.at_level(logging.INFO):
        train(
            smoke(
                "schedule=head_only",
                "trainer.max_epochs_per_stage=8",
                "trainer.num_threads=1",
                "optim.lr=3e-2",
                "optimized_metric=val/loss",
                "trainer.early_stopping_patience=2",
                "experiment_name=vl",
            )
        )
    client, (run,), _ = runs_of(runs_dir, "vl")
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/loss")}
    epochs, best = sorted(losses), min(losses, key=losses.get)
    assert max(losses, key=losses.get) != best  # the direction matters: the lowest loss is the best, not the highest
    assert run.data.metrics["best/epoch"] == best and run.data.metrics["best/val_loss"] == pytest.approx(losses[best])
    # it stopped: patience epochs after the best, before the cap; the stop tagged and said once on the console
    assert epochs == list(range(1, best + 3)) and epochs[-1] < 8
    assert run.data.tags["early_stop.head"] == f"epoch {best + 2} of 8"
    stops = [r.getMessage() for r in caplog.records if "early stop after" in r.getMessage()]
    assert stops == [
        f"[head] early stop after epoch {best + 2} of 8: val/loss not better for 2 epoch(s) "
        "(trainer.early_stopping_patience=2)"
    ]


def test_onecycle_without_a_warmup_share_is_refused(smoke):
    with pytest.raises(ConfigError, match="optim.scheduler=onecycle needs 0 < optim.warmup_frac < 1"):
        train(smoke("optim.scheduler=onecycle", "optim.warmup_frac=0"))
