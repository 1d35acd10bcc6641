"""Nothing lost: resume after SIGKILL, clean stops on signals and divergence, failed writes,
untrusted checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, make_dataset, run_cli

from mnistcnn import files
from mnistcnn.cli import compose_config
from mnistcnn.errors import UserError
from mnistcnn.run import train_run

TIMINGS = {"started", "finished", "train_time_s", "data_load_s", "report_time_s",
           "epoch_time_s"}


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMINGS}


def run_files(run_dir):
    metrics = [without_timings(json.loads(line)) for line in (run_dir / "metrics.jsonl").open()]
    return metrics, without_timings(json.loads((run_dir / "summary.json").read_text()))


@pytest.fixture(scope="module")
def bigger_dir(tmp_path_factory):
    """Enough synthetic images that an epoch lasts long enough to be killed inside."""
    return make_dataset(tmp_path_factory.mktemp("bigger"), n_train=6000, n_test=300)


def train_args(data_dir, run_dir):
    return ["train", "model=classic", f"data.dir={data_dir}", "data.val_size=300",
            "trainer.epochs=3", "report.enabled=false", f"hydra.run.dir={run_dir}"]


def start(args):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen([sys.executable, "-m", "mnistcnn", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(run_dir, n, proc, timeout=240):
    deadline = time.time() + timeout
    path = run_dir / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} epochs before the process ended: {proc.communicate()}")


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(bigger_dir, tmp_path):
    reference = tmp_path / "reference"
    assert run_cli(*train_args(bigger_dir, reference)).returncode == 0
    killed = tmp_path / "killed"
    proc = start(train_args(bigger_dir, killed))
    wait_for_epochs(killed, 1, proc)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "summary.json").read_text())["status"] == "running"
    result = run_cli("train", f"resume={killed}")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert run_files(killed) == run_files(reference)
    assert not (killed / "last.pt").exists()  # model.pt has the final weights


def test_sigterm_stops_after_the_batch_then_resume_completes(bigger_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(train_args(bigger_dir, run_dir))
    wait_for_epochs(run_dir, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epoch"] >= 2
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] >= 1
    result = run_cli("train", f"resume={run_dir}")
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    again = run_cli("train", f"resume={run_dir}")
    assert again.returncode == 0 and "already completed" in again.stdout


def test_divergence_is_recorded_and_reported_on_one_line(synthetic_dir, tmp_path):
    result = run_cli("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                     "optim=sgd", "optim.lr=1e12", "report.enabled=false",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.startswith("error: training diverged: non-finite loss in epoch 1")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epoch"] == 1
    assert summary["batch"] >= 0 and summary["lr"] == 1e12


def test_a_failed_write_keeps_the_last_good_checkpoint(synthetic_dir, tmp_path, monkeypatch):
    cfg = compose_config([f"data.dir={synthetic_dir}", "data.val_size=200", "model=tiny",
                          "trainer.epochs=3", "report.enabled=false"])
    real_save = files.save_torch
    saves = []

    def disk_full_on_second_save(path, obj):
        saves.append(path)
        if len(saves) == 2:
            def fail(f):
                f.write(b"partial")
                raise OSError(28, "No space left on device")
            return files.atomic_write(path, fail)
        return real_save(path, obj)

    monkeypatch.setattr(files, "save_torch", disk_full_on_second_save)
    with pytest.raises(UserError, match="cannot write .*last.pt: No space left on device"):
        train_run(cfg, tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1  # the last good one, whole
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    assert not list(tmp_path.glob(".*.tmp"))


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(synthetic_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                   "trainer.epochs=1", "report.enabled=false",
                   f"hydra.run.dir={run_dir}").returncode == 0
    with open(run_dir / "model.pt", "wb") as f:
        pickle.dump({"model": RunsCode(), "config": {}}, f)
    result = run_cli("evaluate", f"run={run_dir}", cwd=tmp_path)
    assert result.returncode == 2 and "cannot be loaded safely" in result.stderr
    assert not (tmp_path / "PWNED").exists()


def test_sweep_resume_skips_completed_and_finishes_the_rest(synthetic_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
            "trainer.epochs=1", "report.enabled=false", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    assert run_cli(*args).returncode == 0
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    first = json.loads((jobs[0] / "summary.json").read_text())
    # Make the second job look killed before it finished.
    (jobs[1] / "summary.json").write_text(json.dumps({"status": "running"}))
    (jobs[1] / "model.pt").unlink()
    result = run_cli(*args, "resume=true")
    assert result.returncode == 0, result.stderr
    assert "already completed" in result.stdout
    assert json.loads((jobs[0] / "summary.json").read_text()) == first  # untouched
    assert json.loads((jobs[1] / "summary.json").read_text())["status"] == "completed"
    assert (sweep / "comparison.md").exists()
