"""`trainer.device`: which device this process trains on, and which GPU a multirun job takes."""

from __future__ import annotations

import logging
import os

import torch

from ttm_experiments.errors import ConfigError

log = logging.getLogger(__name__)


def assign_gpu(job_num: int | None, n_gpus: int) -> int | None:
    """The GPU (an index into the visible ones) that job `job_num` of a multirun takes with trainer.device=auto.

    Job j takes GPU `j % n_gpus`: K jobs started together (joblib's `n_jobs=K`, numbered consecutively) spread
    evenly over the GPUs, several per GPU when K > n_gpus. A single run (`job_num` None) takes GPU 0. None when
    there is no GPU.
    """
    if n_gpus < 0:
        raise ValueError(f"n_gpus={n_gpus} must be >= 0")
    if job_num is not None and job_num < 0:
        raise ValueError(f"job_num={job_num} must be >= 0 (Hydra numbers a sweep's jobs from 0)")
    if n_gpus == 0:
        return None
    return 0 if job_num is None else job_num % n_gpus


def pick_device(name: str, job_num: int | None = None) -> torch.device:
    """`trainer.device` -> the device this process trains on; a CUDA one is also made the current device.

    `auto`: a CUDA GPU if there is one (multirun job `job_num` takes `assign_gpu(job_num, visible GPUs)`), else
    MPS, else the CPU. `cuda` is GPU 0 and `cuda:<i>` GPU i, both counted among the visible GPUs
    (CUDA_VISIBLE_DEVICES renumbers them from 0), for every job. The chosen GPU is made current
    (torch.cuda.set_device) so that what allocates on a bare "cuda" (a library, the CUDA context itself) lands on
    it too, not on cuda:0.
    """
    try:
        device = torch.device("cpu" if name == "auto" else name)
    except RuntimeError as err:
        raise ConfigError(
            f"trainer.device={name!r} is not a device ({err}). Fix: trainer.device=auto, cpu, cuda, cuda:<index> or mps"
        ) from None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    if name == "auto":
        if torch.cuda.is_available():
            n_gpus = torch.cuda.device_count()
            device = torch.device("cuda", assign_gpu(job_num, n_gpus))
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = torch.device("mps")
    elif device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.device={name} but no CUDA device is visible{where}; use trainer.device=auto or cpu"
            )
        n_gpus = torch.cuda.device_count()
        device = torch.device("cuda", device.index or 0)
        if device.index >= n_gpus:
            raise ConfigError(
                f"trainer.device={name} but only {n_gpus} GPU(s) are visible{where}, numbered from 0 among the "
                f"visible ones. Fix: trainer.device=cuda:<0..{n_gpus - 1}>, or trainer.device=auto (multirun jobs "
                "spread over the visible GPUs)."
            )
    if device.type != "cuda":
        log.info("device %s (trainer.device=%s)", device, name)
        return device
    torch.cuda.set_device(device)
    job = "single run" if job_num is None else f"job {job_num}"
    log.info(
        "%s -> %s of %d visible GPU%s%s (trainer.device=%s)",
        job,
        device,
        n_gpus,
        "" if n_gpus == 1 else "s",
        where,
        name,
    )
    return device
