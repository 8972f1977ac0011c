"""The LR finder (`optim.lr_find=true`): granite-tsfm's `optimal_lr_finder` on the real tiny TTM, its valley, a
run that trains exactly as one given the found rate, what reaches MLflow, and the configs it refuses."""

from __future__ import annotations

import csv
import io
import random

import numpy as np
import pytest
import torch
from tsfm_public.toolkit.lr_finder import valley

from ttm_experiments.config.spec import to_config
from ttm_experiments.errors import ConfigError
from ttm_experiments.training import lr_finder, stage_cache
from ttm_experiments.training.recipe import RunInfo, TrainRecipe

FIND = ("trainer.num_threads=1", "optim.lr_find=true", "optim.lr_find_steps=30")


def _setup(cfg, tmp_path) -> TrainRecipe:
    """The recipe's setup without a tracker (as `ttm-train --cfg job` plans the stage cache): data, model, finder."""
    recipe = TrainRecipe(to_config(cfg), RunInfo(output_dir=tmp_path, config_yaml=""))
    recipe.setup(track=False)
    return recipe


def _their_suggestion(found: lr_finder.FoundRate) -> float:
    """Their valley rule on the logged curve: their finder pairs each smoothed loss with the rate after its step."""
    rates = [lr for lr, _, _ in found.curve]
    after = [*rates[1:], rates[-1] * rates[1] / rates[0]]  # the exponential sweep's next rate
    return valley(after, [smooth for _, _, smooth in found.curve])


def test_the_finder_picks_the_valley_of_the_real_ttm_and_the_run_takes_it(smoke, tmp_path, caplog):
    caplog.set_level("INFO", logger="ttm_experiments")
    recipe = _setup(smoke(*FIND), tmp_path)
    found = recipe.lr_found
    assert 2 < found.steps <= 31  # 30 batch updates and the one that stops it, or fewer when the loss explodes
    assert found.lr == _their_suggestion(found)  # the curve logged is the one their valley rule read
    rates = [lr for lr, _, _ in found.curve]
    smoothed = [s for _, _, s in found.curve]
    at = rates.index(found.lr)
    assert at > 0 and smoothed[at - 1] < smoothed[0]  # inside the sweep, on a stretch below where it started
    assert rates == sorted(rates) and rates[0] > 1e-7 and rates[-1] <= 10.0 * (rates[1] / rates[0])
    assert found.plot.startswith(b"\x89PNG") and not found.at_start
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("learning rate: found")]
    mantissa, exponent = f"{found.lr:.1e}".split("e")
    assert line == [f"learning rate: found {mantissa}e{int(exponent)} (valley rule, {found.steps} steps)"]
    # optim.lr is the found rate from here on: the stages' rates and the stage cache's keys hold it
    assert recipe.config.optim.lr == found.lr
    head = recipe.stages[0]
    assert head.head_lr == found.lr * head.conf.head_lr_scale
    settings = stage_cache.stage_settings(recipe.config, recipe.optim, head)
    assert settings["optim"].lr == found.lr and settings["head_lr"] == head.head_lr


def test_the_finder_leaves_weights_flags_modes_and_random_streams_as_they_were(smoke, tmp_path):
    recipe = _setup(smoke("trainer.num_threads=1", "optim.lr_find_steps=20"), tmp_path)  # no finder in setup
    model, c = recipe.model, recipe.config
    model.train()
    model.backbone.eval()  # a mixed state, to see it come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    streams = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    seen = {}

    def spy(module, args):  # the sweep really trains the model it was given (its weights move)
        seen.setdefault("first", {k: v.clone() for k, v in model.state_dict().items()})
        seen["last"] = {k: v.clone() for k, v in model.state_dict().items()}

    handle = model.register_forward_pre_hook(spy)
    found = lr_finder.find_lr(model, recipe.splits.train, c, recipe.stages[0], torch.device("cpu"))
    handle.remove()
    assert found.steps > 2
    assert any(not torch.equal(seen["first"][k], seen["last"][k]) for k in before)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), streams[0])
    assert np.array_equal(np.random.get_state()[1], streams[1]) and random.getstate() == streams[2]


def test_after_setup_a_finder_run_starts_where_a_run_given_the_found_rate_starts(smoke, tmp_path):
    found = _setup(smoke(*FIND), tmp_path / "a")
    rng_found = torch.get_rng_state()  # taken after each setup: setup seeds torch first
    found_weights = {k: v.clone() for k, v in found.model.state_dict().items()}
    given = _setup(smoke("trainer.num_threads=1", f"optim.lr={found.lr_found.lr!r}"), tmp_path / "b")
    assert torch.equal(torch.get_rng_state(), rng_found)
    assert all(torch.equal(found_weights[k], v) for k, v in given.model.state_dict().items())
    assert [(s.head_lr, s.backbone_lr) for s in found.stages] == [(s.head_lr, s.backbone_lr) for s in given.stages]


def test_a_finder_run_records_its_curve_and_trains_as_a_run_given_the_found_rate(smoke, runs_dir):
    """Two real runs in a real SQLite store: the second is given the first's found rate and no stage cache."""
    from mlflow.tracking import MlflowClient

    from ttm_experiments.cli.train import train

    train(smoke(*FIND, "experiment_name=finder"))
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir}/mlflow.db")

    def parent(experiment):
        exp = client.get_experiment_by_name(experiment).experiment_id
        (run,) = [r for r in client.search_runs([exp]) if "mlflow.parentRunId" not in r.data.tags]
        return run

    run = parent("finder")
    found = float(run.data.params["optim.lr_found"])
    assert run.data.params["optim.lr"] == run.data.params["optim.lr_found"]
    assert run.data.tags["optim.lr_source"] == "finder"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "lr_finder")} == {
        "lr_finder/curve.csv",
        "lr_finder/curve.png",
    }
    text = client.download_artifacts(run.info.run_id, "lr_finder/curve.csv", str(runs_dir))
    with open(text) as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    assert list(rows[0]) == ["lr", "loss", "smoothed_loss"] and len(rows) > 2
    curve = lr_finder.FoundRate(
        found, [(float(r["lr"]), float(r["loss"]), float(r["smoothed_loss"])) for r in rows], b""
    )
    assert _their_suggestion(curve) == found

    train(smoke("trainer.num_threads=1", f"optim.lr={found!r}", "trainer.stage_cache=false", "experiment_name=given"))
    given = parent("given")
    assert "optim.lr_source" not in given.data.tags

    def history(run):  # every metric of every stage run, by step
        exp = run.info.experiment_id
        runs = client.search_runs([exp])
        out = {}
        for r in runs:
            name = r.data.tags.get("mlflow.runName", "") if "mlflow.parentRunId" in r.data.tags else "parent"
            for key in r.data.metrics:
                if key.startswith(("train/", "val/", "test/")):
                    out[(name, key)] = [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)]
        return out

    got, want = history(run), history(given)
    assert got.keys() == want.keys() and any(k[1] == "train/loss" for k in got)
    for key, values in want.items():  # exactly equal (NaN where both are NaN)
        np.testing.assert_array_equal(np.array(got[key]), np.array(values), err_msg=str(key))


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["backbone=baseline_sqi"], "a baseline has no gradient training"),
        (["schedule=linear_probe"], "a linear probe is fitted by logistic regression"),
        (["schedule=pretrain"], "starts with the self-supervised stage"),
        (["schedule=hybrid"], "starts with the self-supervised stage"),
        (["optim.lr_find_steps=1"], "optim.lr_find_steps=1 must be >= 2"),
    ],
)
def test_the_finder_is_refused_where_it_cannot_serve(smoke, overrides, says):
    with pytest.raises(ConfigError, match=says) as err:
        to_config(smoke("optim.lr_find=true", *overrides))
    assert "\n" not in str(err.value) and ("Fix:" in str(err.value) or "steps" in str(err.value))
    to_config(smoke(*overrides))  # the same config without the finder is fine


@pytest.mark.slow
def test_each_job_of_a_sweep_finds_its_own_rate_and_a_swept_rate_is_refused(runs_dir):
    """A real `ttm-train -m` grid of two jobs that differ only in their MLflow experiment: each runs the finder, and
    the second reuses the first's stages, whose keys hold the found rate (the same: one seed, one data)."""
    from tests.helpers.runs import cli, finish, runs_of, start

    done = finish(start(cli(runs_dir, "optim.lr_find=true", "optim.lr_find_steps=20", "experiment_name=fa,fb")))
    assert (done.stdout + done.stderr).count("learning rate: found") == 2
    (first,), (second,) = (runs_of(runs_dir, name)[1] for name in ("fa", "fb"))
    assert first.data.tags["optim.lr_source"] == second.data.tags["optim.lr_source"] == "finder"
    rate = first.data.params["optim.lr_found"]
    assert first.data.params["optim.lr"] == rate == second.data.params["optim.lr_found"]
    assert first.data.tags["stage_cache.computed"] == "head,partial"
    assert second.data.tags["stage_cache.reused"] == "head,partial"

    refused = finish(start(cli(runs_dir, "optim.lr_find=true", "optim.lr=1e-3,1e-4")), check=False)
    assert refused.returncode != 0
    assert "optim.lr_find=true with optim.lr=0.001: the finder replaces optim.lr" in refused.stderr + refused.stdout


@pytest.mark.slow
def test_a_finder_run_killed_mid_run_resumes_with_the_rate_it_found(tmp_path):
    """A real SIGKILL after the second supervised epoch (TTM_FAULT), then the same command: the run continues with
    its found rate, without a second sweep, and finishes as one MLflow run."""
    import os
    import subprocess
    import sys

    from tests.helpers.configs import REPO
    from tests.helpers.runs import runs_of

    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "ttm_experiments.cli.train",
        *FIND,
        "debug=tiny",
        f"paths.runs_dir={runs}",
        f"hydra.run.dir={tmp_path / 'out'}",
        "experiment_name=killed",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        cmd, cwd=REPO, env={**env, "TTM_FAULT": "epoch.supervised:2"}, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -9 and "learning rate: found" in killed.stdout + killed.stderr
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "learning rate: found" not in out and "found by the finder before the run stopped" in out
    _, (parent,), _ = runs_of(runs, "killed")
    assert parent.info.status == "FINISHED" and parent.data.tags["resumed"] == "true"
    assert parent.data.params["optim.lr"] == parent.data.params["optim.lr_found"]


def test_a_suggestion_at_the_start_of_the_sweep_is_flagged():
    """Their valley rule on a loss that only rises returns the rate after the first step: flagged (a warning)."""
    rates = [1e-7 * 2**i for i in range(20)]
    rising = [(lr, float(i), float(i)) for i, lr in enumerate(rates)]
    flat_start = lr_finder.FoundRate(_their_suggestion(lr_finder.FoundRate(0.0, rising, b"")), rising, b"")
    assert flat_start.lr == rates[1] and flat_start.at_start
    falling = [(lr, float(-i), float(-i)) for i, lr in enumerate(rates)]
    assert not lr_finder.FoundRate(_their_suggestion(lr_finder.FoundRate(0.0, falling, b"")), falling, b"").at_start
