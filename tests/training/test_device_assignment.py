"""trainer.device: which GPU a multirun job takes (assign_gpu), and pick_device's choices and errors.

There is no GPU on the test machines: the CUDA tests replace `torch.cuda.is_available`, `device_count` and
`set_device` with stand-ins (mocking hardware that does not exist here). What they check is the choice and the
call to `set_device`, not that CUDA works; bench/gpu.sh runs the real thing on a GPU.
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch

from ttm_experiments.errors import ConfigError
from ttm_experiments.training import device as specs
from ttm_experiments.training.device import assign_gpu, pick_device


@pytest.mark.parametrize(
    ("job_num", "n_gpus", "expected"),
    [
        (None, 1, 0),
        (None, 4, 0),  # a single run: GPU 0
        (0, 1, 0),
        (7, 1, 0),  # one GPU: every job packs onto it
        (0, 2, 0),
        (1, 2, 1),
        (5, 2, 1),
        (6, 2, 0),
        (7, 3, 1),
        (8, 3, 2),
        (9, 3, 0),
        (3, 0, None),
        (None, 0, None),  # no GPU
    ],
)
def test_assign_gpu_is_the_job_number_modulo_the_gpu_count(job_num, n_gpus, expected):
    assert assign_gpu(job_num, n_gpus) == expected


def test_assign_gpu_spreads_a_sweep_evenly():
    """joblib n_jobs=8 on 2 GPUs: 4 jobs per GPU; 8 jobs on 3 GPUs: 3, 3, 2."""
    assert Counter(assign_gpu(j, 2) for j in range(8)) == {0: 4, 1: 4}
    assert Counter(assign_gpu(j, 3) for j in range(8)) == {0: 3, 1: 3, 2: 2}


@pytest.mark.parametrize(("job_num", "n_gpus"), [(-1, 2), (0, -1)])
def test_assign_gpu_refuses_negative_input(job_num, n_gpus):
    with pytest.raises(ValueError):
        assign_gpu(job_num, n_gpus)


@pytest.fixture
def fake_gpus(monkeypatch):
    """`n` visible CUDA GPUs that do not exist (stand-ins for torch.cuda); returns the devices set current."""
    current: list[torch.device] = []

    def install(n: int) -> list[torch.device]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        return current

    return install


def test_auto_gives_a_sweep_job_its_gpu_and_makes_it_current(fake_gpus, caplog):
    current = fake_gpus(2)
    with caplog.at_level(logging.INFO, logger=specs.__name__):
        device = pick_device("auto", job_num=5)
    assert device == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]  # nothing can land on cuda:0 through a bare "cuda"
    assert "job 5 -> cuda:1 of 2 visible GPUs" in caplog.text


def test_auto_single_run_takes_gpu_0(fake_gpus):
    current = fake_gpus(4)
    assert pick_device("auto") == torch.device("cuda", 0)
    assert current == [torch.device("cuda", 0)]


def test_auto_packs_eight_jobs_on_one_visible_gpu(fake_gpus, monkeypatch, caplog):
    """CUDA_VISIBLE_DEVICES=3: torch sees one GPU, numbered 0; every job takes it."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    fake_gpus(1)
    with caplog.at_level(logging.INFO, logger=specs.__name__):
        devices = {pick_device("auto", job_num=j) for j in range(8)}
    assert devices == {torch.device("cuda", 0)}
    assert "job 7 -> cuda:0 of 1 visible GPU (CUDA_VISIBLE_DEVICES=3)" in caplog.text


def test_auto_without_a_gpu_is_the_cpu(fake_gpus):
    fake_gpus(0)
    assert pick_device("auto", job_num=3) == torch.device("cpu")


@pytest.mark.parametrize(("name", "expected"), [("cuda", 0), ("cuda:0", 0), ("cuda:1", 1)])
def test_an_explicit_gpu_is_kept_for_every_job(fake_gpus, name, expected):
    current = fake_gpus(2)
    assert pick_device(name, job_num=4) == torch.device("cuda", expected)
    assert pick_device(name, job_num=5) == torch.device("cuda", expected)
    assert current == [torch.device("cuda", expected)] * 2


def test_an_index_beyond_the_visible_gpus_names_the_key_and_the_fix(fake_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    current = fake_gpus(2)
    with pytest.raises(
        ConfigError,
        match=r"trainer.device=cuda:2 but only 2 GPU\(s\) are visible "
        r"\(CUDA_VISIBLE_DEVICES=2,5\).*Fix: trainer.device=cuda:<0..1>",
    ):
        pick_device("cuda:2")
    assert current == []  # refused before touching CUDA


def test_cuda_without_a_gpu_is_a_config_error(fake_gpus):
    fake_gpus(0)
    with pytest.raises(ConfigError, match="trainer.device=cuda:1 but no CUDA device is visible"):
        pick_device("cuda:1")


def test_a_misspelled_device_is_a_config_error():
    with pytest.raises(ConfigError, match=r"trainer.device='gpu' is not a device.*Fix: trainer.device=auto"):
        pick_device("gpu")


def test_cpu_is_the_cpu_whatever_the_job(fake_gpus):
    current = fake_gpus(2)
    assert pick_device("cpu", job_num=1) == torch.device("cpu")
    assert current == []


def test_the_recipe_passes_the_sweep_job_number(smoke, monkeypatch, tmp_path):
    """TrainRecipe.setup asks pick_device for this job's device (RunInfo.job_num, from Hydra's job.num)."""
    from ttm_experiments.config.spec import to_config
    from ttm_experiments.training.recipe import RunInfo, TrainRecipe

    class Stop(Exception):
        pass

    seen = []

    def fake_pick_device(name, job_num=None):
        seen.append((name, job_num))
        raise Stop  # setup goes no further: only the call is under test

    monkeypatch.setattr("ttm_experiments.training.recipe.pick_device", fake_pick_device)
    recipe = TrainRecipe(to_config(smoke()), RunInfo(tmp_path, "", sweep_id="sweep", job_num=6))
    with pytest.raises(Stop):
        recipe.setup()
    assert seen == [("auto", 6)]
