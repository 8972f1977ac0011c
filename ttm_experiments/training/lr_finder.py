"""The learning-rate finder (`optim.lr_find=true`): granite-tsfm's `optimal_lr_finder` on the run's own model.

Before the stages' rates are planned, the recipe calls `find_lr`: granite-tsfm's `optimal_lr_finder` (the function
TSPulse's classification recipe uses) sweeps one rate exponentially from 1e-7 to 10 over `optim.lr_find_steps`
batches of the training windows and suggests the middle of the longest run of falling smoothed loss (its "valley"
rule). The suggestion becomes `optim.lr` for the whole run, so the stage scales, the fine-tuning scales and the
stage cache's key all follow it (a key holds the found rate, never the request to find one).

The function is called as it ships. What the suite adds around it is thin:

* `_LossModule`: their finder runs a dict batch through `model(**batch).loss` (a HF model), so the classifier is
  wrapped in a module whose `forward(past_values, labels)` returns the run's own loss (`optim.loss`). It also puts
  frozen modules in evaluation mode as the training loop does, and notes each step's rate and raw loss: the
  function returns only the suggestion, and the curve is logged (`lr_finder/curve.csv`, `lr_finder/curve.png`).
* The first supervised stage's configuration: its unfreeze plan decides which parameters train, and the optimizer
  is the loop's (AdamW over the loop's parameter groups). Their finder sets every group to the same swept rate, so
  the stage's head/backbone ratios are not part of the sweep; the found rate is the base rate they scale.
* Nothing of the sweep survives it: the weights (their finder reloads its own copy; this module restores one too,
  also when the sweep fails), `requires_grad`, the train/eval modes, the gradients and the random streams (torch,
  CUDA, NumPy, `random`: their data loader shuffles with torch's) are as before, so the run trains exactly as one
  given the found rate directly (tests/training/test_lr_finder.py pins it).

Their finder runs in full precision without gradient clipping (`trainer.amp`, `optim.grad_clip` apply to the run,
not the sweep), and its `fit` ends on any KeyboardInterrupt, which is how it stops itself; a Ctrl-C under the run's
signal handlers only sets a flag, and `find_lr` checks it when the sweep is over.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import random
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ttm_experiments.config.schema import StageKind, TrainConfig
from ttm_experiments.data.base import WindowSet
from ttm_experiments.errors import ConfigError
from ttm_experiments.training import signals
from ttm_experiments.training.losses import build_loss
from ttm_experiments.training.optim import make_optimizer, param_groups
from ttm_experiments.training.stages import StagePlan

log = logging.getLogger(__name__)

BETA = 0.98  # the smoothing of their finder (LRFinder's default), reproduced only for the logged curve
START_LR, END_LR = 1e-7, 10.0  # their sweep's bounds (optimal_lr_finder's defaults)


def check(c: TrainConfig) -> None:
    """`optim.lr_find=true` where a finder cannot serve: refused before any work, with the fix."""
    if not c.optim.lr_find:
        return
    if c.backbone.kind.value in ("sqi", "site"):
        raise ConfigError(
            f"optim.lr_find=true with backbone={c.backbone.name}: a baseline has no gradient training, so there is no "
            "learning rate to find. Fix: optim.lr_find=false, or a trained backbone."
        )
    if c.schedule.probe_c_grid:
        raise ConfigError(
            f"optim.lr_find=true with schedule={c.schedule.name}: a linear probe is fitted by logistic regression "
            "over schedule.probe_c_grid, not by a learning rate. Fix: optim.lr_find=false, or a trained schedule."
        )
    if c.optim.lr_find_steps < 2:
        raise ConfigError(f"optim.lr_find_steps={c.optim.lr_find_steps} must be >= 2 (the sweep needs two rates)")
    names = [s.name for s in c.schedule.stages]
    stages = c.schedule.stages[names.index(c.schedule.start_at) :] if c.schedule.start_at in names else []
    stages = stages or c.schedule.stages
    if stages and stages[0].kind != StageKind.supervised:
        raise ConfigError(
            f"optim.lr_find=true with schedule={c.schedule.name}: it starts with the self-supervised stage "
            f"{stages[0].name!r}, and the finder needs the weights the first supervised stage starts from. Fix: run "
            "the self-supervised stages first, then the supervised ones with schedule.start_at=<supervised stage> "
            "backbone.pretrained_path=<that run's stage checkpoint> optim.lr_find=true; or optim.lr_find=false."
        )


def check_overrides(overrides: tuple[str, ...]) -> None:
    """With `optim.lr_find=true`, an `optim.lr` given on the command line (or by a sweep or an Optuna study, whose
    jobs receive it as an override) would be replaced by the found rate without effect: refused."""
    given = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == "optim.lr"]
    if given:
        raise ConfigError(
            f"optim.lr_find=true with {given[0]}: the finder replaces optim.lr, so the value given (or swept) would do "
            "nothing. Fix: drop optim.lr from the command line or the search space (hparams_search), or "
            "optim.lr_find=false."
        )


@dataclass(frozen=True)
class FoundRate:
    """The finder's suggestion and its curve (per step: the rate it ran at, its loss, the smoothed loss)."""

    lr: float
    curve: list[tuple[float, float, float]]
    plot: bytes  # their finder's own plot (smoothed loss over the rate), as PNG

    @property
    def steps(self) -> int:
        return len(self.curve)

    @property
    def at_start(self) -> bool:
        """The valley is the sweep's first point (the loss never fell): their rule then returns the rate after the
        first step, about the sweep's lower bound."""
        return self.steps < 2 or self.lr <= self.curve[1][0]

    def line(self) -> str:
        mantissa, exponent = f"{self.lr:.1e}".split("e")
        return f"learning rate: found {mantissa}e{int(exponent)} (valley rule, {self.steps} steps)"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["lr", "loss", "smoothed_loss"])
        writer.writerows((repr(lr), repr(loss), repr(smooth)) for lr, loss, smooth in self.curve)
        return out.getvalue()

    def record(self, tracker) -> None:
        """On the run: param `optim.lr_found`, tag `optim.lr_source=finder`, the curve under `lr_finder/`."""
        tracker.log_params({"optim.lr_found": self.lr})
        tracker.set_tags({"optim.lr_source": "finder"})
        tracker.log_text(self.csv(), "lr_finder/curve.csv")
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "curve.png"
            png.write_bytes(self.plot)
            tracker.client.log_artifact(tracker.run_id, str(png), "lr_finder")


@dataclass
class _Output:
    loss: torch.Tensor  # what their finder reads from a model's output


class _LossModule(nn.Module):
    """The classifier as their finder calls a HF model: `forward(past_values, labels).loss` (the run's loss)."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, frozen_eval: bool, optimizer: torch.optim.Optimizer):
        super().__init__()
        self.model, self.loss_fn, self.frozen_eval = model, loss_fn, frozen_eval
        self.optimizer = optimizer  # read only: the rate of each step, for the curve
        self.steps: list[tuple[float, torch.Tensor]] = []

    def forward(self, past_values: torch.Tensor, labels: torch.Tensor) -> _Output:
        from ttm_experiments.models.unfreeze import freeze_frozen_modes

        if self.frozen_eval:  # as the loop trains: frozen modules in evaluation mode (no dropout, fixed BatchNorm)
            freeze_frozen_modes(self.model)
        if not any(p.requires_grad for p in self.model.backbone.parameters()):
            self.model.backbone.eval()  # a head-only stage runs its frozen backbone in evaluation mode
        loss = self.loss_fn(self.model(past_values).float(), labels)
        self.steps.append((float(self.optimizer.param_groups[0]["lr"]), loss.detach()))
        return _Output(loss)


class _Windows(torch.utils.data.Dataset):
    """The training windows as dict rows (`past_values`, `labels`), the batches their finder collates."""

    def __init__(self, ws: WindowSet, batch_size: int):
        n = len(ws.labels)
        if n > 1 and n % batch_size == 1:  # BatchNorm cannot train on a last batch of one (as the loop drops it)
            n -= 1
        self.x = torch.from_numpy(ws.signals[:n])
        self.y = torch.from_numpy(ws.labels[:n])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"past_values": self.x[i], "labels": self.y[i]}


def _rng_state(device: torch.device) -> dict:
    """Every stream the sweep may draw from; CUDA's also when the sweep is the first to use it (its dropout draws
    there, and a seed `torch.manual_seed` queued for CUDA is applied when this first reads the state)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available() and (device.type == "cuda" or torch.cuda.is_initialized()):
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def find_lr(model: nn.Module, train: WindowSet, c: TrainConfig, stage: StagePlan, device: torch.device) -> FoundRate:
    """Run their finder on `model` in the configuration of `stage` (the first supervised one); leave no trace."""
    from tsfm_public.toolkit.lr_finder import optimal_lr_finder

    from ttm_experiments.models.unfreeze import apply_stage, find_blocks

    rng = _rng_state(device)
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    home = next(model.parameters()).device
    try:
        model.to(device)
        _, selected = apply_stage(model, c.unfreeze, scope=stage.scope, stage=stage.name)
        blocks = find_blocks(model.backbone.model, c.unfreeze) if stage.scope == "full" else selected
        groups = param_groups(model, stage, selected, blocks, c.optim.layer_decay)
        optimizer = make_optimizer(groups, weight_decay=c.optim.weight_decay, device=device)
        loss_fn = build_loss(c.optim, train.labels, len(train.class_names)).to(device)
        wrapped = _LossModule(model, loss_fn, c.unfreeze.frozen_mode.value == "eval", optimizer)
        with tempfile.TemporaryDirectory() as tmp:
            where = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
            with where:  # their finder takes "cuda" to mean the current CUDA device
                lr, _ = optimal_lr_finder(
                    wrapped,
                    _Windows(train, c.optim.batch_size),
                    optimizer=optimizer,
                    device=device.type,
                    start_lr=START_LR,
                    end_lr=END_LR,
                    num_iter=c.optim.lr_find_steps,
                    batch_size=c.optim.batch_size,
                    plot_lr_finder=True,
                    plot_save_dir=tmp,
                )
            plot = (Path(tmp) / "lr_finder.png").read_bytes()
        found = FoundRate(float(lr), _curve(wrapped.steps), plot)
    finally:
        model.load_state_dict(weights)
        model.zero_grad(set_to_none=True)
        for name, p in model.named_parameters():
            p.requires_grad_(grads[name])
        for name, m in model.named_modules():
            m.training = modes[name]
        model.to(home)
        _restore_rng(rng)
    signals.check()  # a Ctrl-C during the sweep stops the run here
    log.info(found.line())
    if found.at_start:
        log.warning(
            "the finder's suggestion %.3g is at the start of its sweep (the loss never fell): check the data and the "
            "model, or set optim.lr yourself (optim.lr_find=false)",
            found.lr,
        )
    return found


def _curve(steps: list[tuple[float, torch.Tensor]]) -> list[tuple[float, float, float]]:
    """Per step: its rate, its loss, and the smoothed loss their finder's valley rule reads (debiased EMA)."""
    curve, average = [], 0.0
    for i, (lr, loss) in enumerate(steps, start=1):
        value = float(loss)
        average = BETA * average + (1 - BETA) * value
        curve.append((lr, value, average / (1 - BETA**i)))
    return curve


def resumed_rate(c: TrainConfig, output_dir: Path) -> float | None:
    """The rate an unfinished finder run found before it stopped (its resume state holds the run's `optim.lr`):
    a resumed run continues with it instead of sweeping again (a GPU's sweep need not repeat to the bit). None
    when there is nothing to resume; the resume's own checks (a finished run, a changed config) follow as ever."""
    from ttm_experiments.training import resume

    path = resume.locate(c.resume, c.tracking.uri) if c.resume else output_dir / resume.STATE_FILE
    if not path.is_file():
        return None
    state = resume.load_state(path)
    config = state.get("config", {})
    if state.get("finished") or config.get("optim.lr_find") is not True or "optim.lr" not in config:
        return None
    rate = float(config["optim.lr"])
    log.info("learning rate: %.3g, found by the finder before the run stopped (resumed; no new sweep)", rate)
    return rate


def with_found_rate(c: TrainConfig, rate: float) -> TrainConfig:
    """The run's config from here on: `optim.lr` is the found rate."""
    return replace(c, optim=replace(c.optim, lr=rate))
