"""The real CLI as a user runs it: subprocesses on synthetic data (and one real-MNIST run)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_dataset, run_main

RUN_FILES = [".hydra/config.yaml", "metrics.jsonl", "summary.json", "predictions.csv", "model.pt"]


def train(run_dir, data_dir, *overrides, device="cpu", cwd=None):
    """A one-epoch run; on the CPU unless asked otherwise, since these tests expect CPU
    behaviour (device "cpu", bit-equal repeats)."""
    return run_main("train", f"data.dir={data_dir}", "data.val_size=200", "trainer.epochs=1",
                    f"trainer.device={device}", f"hydra.run.dir={run_dir}", *overrides, cwd=cwd)


@pytest.mark.parametrize("model", ["conv5x5", "keras", "classic", "tiny", "mobilenet"])
def test_train_each_model_writes_a_complete_run(model, synthetic_dir, tmp_path):
    result = train(tmp_path / "run", synthetic_dir, f"model={model}", "report.enabled=false")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["model"] == model
    assert summary["test/acc"] > 0.2  # chance is 0.1
    assert summary["params"]["total"] > 0 and summary["device"] == "cpu"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and {"train/loss", "val/acc", "lr", "epoch_time_s"} <= set(records[0])
    lines = (run / "predictions.csv").read_text().splitlines()
    assert lines[0] == "index,label,pred,confidence" and len(lines) == 501
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["config"]["model"]["name"] == model and "model" in ckpt
    assert "test/acc" in result.stdout  # the console summary


def test_same_seed_gives_the_same_metrics(synthetic_dir, tmp_path):
    def metrics(name):
        assert train(tmp_path / name, synthetic_dir, "model=tiny", "report.enabled=false",
                     "trainer.epochs=2").returncode == 0
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in records]
    assert metrics("a") == metrics("b")


def test_evaluate_reproduces_the_test_metrics(synthetic_dir, tmp_path):
    assert train(tmp_path / "run", synthetic_dir, "model=classic",
                 "report.enabled=false").returncode == 0
    before = (tmp_path / "run" / "predictions.csv").read_text()
    result = run_main("evaluate", f"run={tmp_path / 'run'}", "device=cpu")
    assert result.returncode == 0, result.stderr
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert evaluation["test/acc"] == pytest.approx(summary["test/acc"])
    assert (tmp_path / "run" / "predictions.csv").read_text() == before
    assert "test/acc" in result.stdout


@pytest.mark.cuda
def test_a_cuda_run_completes_on_the_gpu_and_repeats_closely(synthetic_dir, tmp_path):
    def run(name):
        result = train(tmp_path / name, synthetic_dir, "model=classic", "report.enabled=false",
                       "trainer.epochs=2", device="cuda")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]

    first, second = run("a"), run("b")
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["device"] == "cuda"
    assert summary["test/acc"] > 0.5
    # trainer.cuda_graph=auto, 28 full batches an epoch: the step was captured and replayed.
    assert summary["train_path"] == "cuda_graph" and summary["graph_replays"] > 0, summary
    # GPU kernels may sum in another order from run to run: close, not bit-equal.
    for a, b in zip(first, second, strict=True):
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-3), key
    result = run_main("evaluate", f"run={tmp_path / 'a'}", "device=cuda")
    assert result.returncode == 0, result.stderr
    evaluation = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert evaluation["device"] == "cuda"
    assert evaluation["test/acc"] == pytest.approx(summary["test/acc"], abs=0.01)


def test_small_multirun_puts_each_job_in_the_sweep_folder(synthetic_dir, tmp_path):
    result = run_main("train", "-m", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                      "trainer.epochs=1", "report.enabled=false", "model.activation=relu,tanh",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 2
    assert jobs[0].name.startswith("0_") and "model.activation=relu" in jobs[0].name
    assert jobs[1].name.startswith("1_") and "model.activation=tanh" in jobs[1].name
    assert "data.dir" not in jobs[0].name  # paths stay out of folder names
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"


def test_summary_and_cfg_job_need_no_data(tmp_path):
    result = run_main("summary", "model=mobilenet", cwd=tmp_path,
                      env={"MNISTCNN_DATA_DIR": "/nonexistent"})
    assert result.returncode == 0 and "total params:" in result.stdout
    result = run_main("train", "--cfg", "job", "model=keras", cwd=tmp_path)
    assert result.returncode == 0 and "conv_layers: 2" in result.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "train-labels-idx1-ubyte.gz").unlink(), "does not hold the four"),
    (lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip"), "cannot read"),
])
def test_bad_data_is_one_line_exit_2_and_no_complete_run(damage, message, tmp_path):
    folder = make_dataset(tmp_path / "data", 100, 20)
    damage(folder)
    result = train(tmp_path / "run", folder, "model=tiny")
    assert result.returncode == 2
    err = result.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
def test_short_real_mnist_run_reaches_95_percent(real_mnist_run):
    summary = json.loads((real_mnist_run / "summary.json").read_text())
    assert summary["test/acc"] >= 0.95, summary
