"""`optim.scheduler=onecycle`: each parameter group rises to its own rate and falls again within a stage; the
default schedule is unchanged; a run trains and resumes with it."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.runs import runs_of
from ttm_experiments.cli.train import train
from ttm_experiments.config.schema import SchedulerKind
from ttm_experiments.errors import ConfigError
from ttm_experiments.training.optim import make_scheduler


def _rates(kind: SchedulerKind, total: int, warmup_frac: float) -> list[list[float]]:
    head, body = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW([{"params": head.parameters(), "lr": 1e-3}, {"params": body.parameters(), "lr": 1e-4}])
    sched = make_scheduler(kind, opt, total, warmup_frac)
    seen = []
    for _ in range(total):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return seen


def test_onecycle_peaks_at_each_groups_rate_then_falls():
    seen = _rates(SchedulerKind.onecycle, 100, 0.3)
    for g, peak in enumerate((1e-3, 1e-4)):
        lrs = [row[g] for row in seen]
        top = max(range(len(lrs)), key=lrs.__getitem__)
        assert lrs[top] == pytest.approx(peak) and 28 <= top <= 30  # the peak after 30 % of the steps
        assert lrs[0] == pytest.approx(peak / 25)  # torch's div_factor
        assert all(a <= b for a, b in zip(lrs[:top], lrs[1 : top + 1]))  # rises
        assert all(a >= b for a, b in zip(lrs[top:], lrs[top + 1 :]))  # then falls
        assert lrs[-1] < peak / 25 / 100  # ends far below the start


def test_the_default_schedule_is_the_warmup_cosine():
    seen = _rates(SchedulerKind.warmup_cosine, 10, 0.1)
    assert [row[0] for row in seen[:2]] == pytest.approx([1e-3, 1e-3])  # one warm-up step at the full rate, then
    assert seen[-1][0] < seen[1][0]  # cosine decay


def test_a_run_with_onecycle_trains_and_records_it(smoke, runs_dir):
    train(smoke("optim.scheduler=onecycle", "experiment_name=onecycle", "trainer.num_threads=1"))
    _, parents, found = runs_of(runs_dir, "onecycle")
    assert parents[0].info.status == "FINISHED" and parents[0].data.params["optim.scheduler"] == "onecycle"
    assert "test/auroc" in parents[0].data.metrics


def test_onecycle_without_a_warmup_share_is_refused(smoke):
    with pytest.raises(ConfigError, match="optim.scheduler=onecycle needs 0 < optim.warmup_frac < 1"):
        train(smoke("optim.scheduler=onecycle", "optim.warmup_frac=0"))
