"""One job per device: the share of the machine each job of a parallel sweep takes.

Hydra's joblib launcher (`--jobs N`, `hydra/launcher=joblib hydra.launcher.n_jobs=N`)
starts N jobs at once, and left alone each of them trains on the first GPU and starts as
many threads as there are cores. Here each job takes one GPU of those visible, round-robin
by job number, and `cores // N` torch threads unless the user set OMP_NUM_THREADS.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Share:
    gpu: int | None  # torch's index among the visible GPUs; None = leave the default
    gpu_name: str | None  # that GPU as CUDA_VISIBLE_DEVICES names it
    threads: int | None  # torch threads; None = leave (OMP_NUM_THREADS decides)


def visible_gpus(env: Mapping[str, str], cuda_count: int) -> list[str]:
    """The GPUs a process sees, as CUDA_VISIBLE_DEVICES names them (torch numbers them
    0, 1, ... in this order); without the variable, every GPU the driver has."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(cuda_count)]
    return [name.strip() for name in listed.split(",") if name.strip()]


def effective_jobs(n_jobs: int, cores: int) -> int:
    """joblib's reading of n_jobs: -1 is one job per core, -2 all cores but one, ..."""
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def share(job_num: int, n_jobs: int, env: Mapping[str, str], cores: int,
          cuda_count: int) -> Share:
    """Job job_num's share when n_jobs run at once on `cores` cores and the GPUs of env."""
    gpus = visible_gpus(env, cuda_count)
    gpu = job_num % len(gpus) if len(gpus) > 1 else None
    threads = None if "OMP_NUM_THREADS" in env else max(1, cores // n_jobs)
    return Share(gpu, gpus[gpu] if gpu is not None else None, threads)


def cpu_cores() -> int:
    """Cores this process may run on (a taskset or container can allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parallel_jobs(hydra: Any) -> int:
    """How many jobs the launcher runs at once: 1 but for a multirun's joblib launcher."""
    launcher = hydra.get("launcher") or {}
    multirun = getattr(hydra.get("mode"), "name", hydra.get("mode")) == "MULTIRUN"
    if not multirun or "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    return effective_jobs(int(launcher.get("n_jobs") or 1), cpu_cores())


def planned_threads(n_jobs: int) -> int:
    """The torch threads each job of a sweep of n_jobs at once will take on the CPU."""
    threads = share(0, n_jobs, os.environ, cpu_cores(), cuda_count=0).threads
    return threads if threads is not None and n_jobs > 1 else torch.get_num_threads()


def take_share(hydra: Any, on_gpu: bool) -> None:
    """In a job of a parallel sweep (hydra = HydraConfig.get()): take its GPU (when it
    trains on one) and its threads, and say so in its log."""
    n_jobs = parallel_jobs(hydra)
    if n_jobs <= 1:
        return
    cuda_count = torch.cuda.device_count() if on_gpu else 0
    mine = share(int(hydra.job.num), n_jobs, os.environ, cpu_cores(), cuda_count)
    if mine.threads is not None:
        torch.set_num_threads(mine.threads)
    if mine.gpu is not None and mine.gpu < cuda_count:
        torch.cuda.set_device(mine.gpu)  # "cuda" now means this GPU in this job
    gpu = f"GPU {mine.gpu_name}, " if mine.gpu is not None and on_gpu else ""
    log.info("job %s (%d jobs at once): %storch threads: %d", hydra.job.num, n_jobs, gpu,
             torch.get_num_threads())
