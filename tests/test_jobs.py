"""One job per device: each job of a parallel sweep takes one visible GPU, round-robin, and
cores // N threads unless OMP_NUM_THREADS is set. GPUs are faked through the environment
the jobs see (CUDA_VISIBLE_DEVICES) and cores are passed in, so this runs on any CPU. A real
joblib sweep logging each job's share is in test_sweep.py."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from mnistcnn.runs import job_share

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def test_jobs_take_the_visible_gpus_round_robin():
    env = {"CUDA_VISIBLE_DEVICES": "3,5,6"}
    taken = [job_share.share(num, 4, env, cores=16, cuda_count=8) for num in range(7)]
    assert [s.gpu for s in taken] == [0, 1, 2, 0, 1, 2, 0]  # torch's index in the job
    assert [s.gpu_name for s in taken] == ["3", "5", "6", "3", "5", "6", "3"]
    assert {s.threads for s in taken} == {4}


def test_without_the_variable_every_gpu_of_the_driver_is_shared_out():
    assert [job_share.share(num, 2, {}, cores=8, cuda_count=2).gpu_name for num in range(3)] == \
        ["0", "1", "0"]


@pytest.mark.parametrize("env, cuda_count", [({}, 0), ({}, 1), ({"CUDA_VISIBLE_DEVICES": "2"}, 4),
                                             ({"CUDA_VISIBLE_DEVICES": ""}, 4)])
def test_one_gpu_or_none_is_left_as_it_is(env, cuda_count):
    assert job_share.share(5, 3, env, cores=6, cuda_count=cuda_count).gpu is None


@pytest.mark.parametrize("n_jobs, cores, threads", [(2, 16, 8), (3, 16, 5), (4, 2, 1),
                                                    (1, 2, 2)])
def test_each_job_gets_its_part_of_the_cores(n_jobs, cores, threads):
    assert job_share.share(0, n_jobs, {}, cores, cuda_count=0).threads == threads


def test_a_users_omp_num_threads_is_kept():
    assert job_share.share(0, 4, {"OMP_NUM_THREADS": "3"}, cores=16, cuda_count=0).threads is None


def test_joblib_n_jobs_is_read_as_joblib_reads_it(monkeypatch):
    monkeypatch.setattr(job_share, "cpu_cores", lambda: 8)
    assert [job_share.effective_jobs(n, 8) for n in (3, -1, -2, -20)] == [3, 8, 7, 1]
    hydra = OmegaConf.create({"mode": "MULTIRUN", "launcher": {"_target_": JOBLIB,
                                                               "n_jobs": -1}})
    assert job_share.parallel_jobs(hydra) == 8
    hydra.mode = "RUN"  # a single run with the launcher configured runs alone
    assert job_share.parallel_jobs(hydra) == 1
    basic = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
    assert job_share.parallel_jobs(OmegaConf.create({"mode": "MULTIRUN", "launcher": basic})) == 1


def test_a_job_of_a_parallel_sweep_sets_its_threads_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(job_share, "cpu_cores", lambda: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # no GPU is touched on the CPU
    hydra = OmegaConf.create({"mode": "MULTIRUN", "launcher": {"_target_": JOBLIB, "n_jobs": 3},
                              "job": {"num": 4}})
    before = torch.get_num_threads()
    try:
        caplog.set_level("INFO", logger="mnistcnn.runs.job_share")
        job_share.take_share(hydra, on_gpu=False)
        assert torch.get_num_threads() == 2
        assert caplog.messages == ["job 4 (3 jobs at once): torch threads: 2"]
        # A job that runs alone takes nothing and says nothing.
        caplog.clear()
        job_share.take_share(OmegaConf.create({"launcher": {}, "job": {"num": 0}}), False)
        assert torch.get_num_threads() == 2 and caplog.messages == []
    finally:
        torch.set_num_threads(before)
