"""Nothing lost: resume after SIGKILL, clean stops on signals and divergence, failed writes,
untrusted checkpoints."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pickle
import pty
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
import torch
from conftest import ROOT, make_dataset, run_main

from mnistcnn.base import errors, run_folder
from mnistcnn.base.config import compose_config
from mnistcnn.base.errors import UserError
from mnistcnn.base.signals import StopOnSignal
from mnistcnn.runs.job import train_run

TIMINGS = {"started", "finished", "train_time_s", "data_load_s", "report_time_s",
           "epoch_time_s"}


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMINGS}


def run_files(run_dir):
    metrics = [without_timings(json.loads(line)) for line in (run_dir / "metrics.jsonl").open()]
    return metrics, without_timings(json.loads((run_dir / "summary.json").read_text()))


@pytest.fixture(scope="module")
def bigger_dir(tmp_path_factory):
    """Enough synthetic images that an epoch lasts long enough to be stopped inside."""
    return make_dataset(tmp_path_factory.mktemp("bigger"), n_train=6000, n_test=300)


@pytest.fixture(scope="module")
def reference(bigger_dir, tmp_path_factory):
    """An uninterrupted run of train_args (seed 0) for interrupted ones to be held against."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_main(*train_args(bigger_dir, run_dir))  # in this process: nothing to signal
    assert result.returncode == 0, result.stderr
    return run_dir


def train_args(data_dir, run_dir, *overrides):
    # On the CPU: resumed metrics must equal uninterrupted ones bit for bit.
    return ["train", "model=classic", f"data.dir={data_dir}", "data.val_size=300",
            "trainer.epochs=2", "trainer.device=cpu", "report.enabled=false",
            f"hydra.run.dir={run_dir}", *overrides]


# The progress bar a terminal gets: "epoch 2/2:  31%|###   | 28/90 [...]".
PROGRESS = re.compile(r"epoch (\d+)/\d+:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")


class Watched:
    """`python -m mnistcnn ARGS` with a terminal for stderr, so it draws its per-epoch
    progress bar: reading the bar tells the test which epoch is in flight, and how far."""

    def __init__(self, args, log_path):
        master, terminal = pty.openpty()
        # A terminal 0 columns wide gets no bar drawn.
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "mnistcnn", *args], cwd=ROOT,
                                         env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=terminal)
        os.close(terminal)
        self.master, self.text, self.log_path = master, "", log_path

    def read(self, timeout: float = 0.05) -> bool:
        if not select.select([self.master], [], [], timeout)[0]:
            return False
        try:
            chunk = os.read(self.master, 1 << 16)
        except OSError:  # EIO: the process has closed the terminal
            chunk = b""
        self.text += chunk.decode(errors="replace")
        return bool(chunk)

    def wait_inside_epoch(self, epoch: int, after=lambda: True, timeout: float = 300) -> int:
        """Wait until `after()` holds and then the bar shows batches of `epoch` done, with
        more to go; returns how many were done."""
        deadline, start = time.time() + timeout, None
        while time.time() < deadline:
            got = self.read()
            if start is None and after():
                while self.read(0):  # output from before the condition held
                    pass
                start = len(self.text)
            for m in PROGRESS.finditer(self.text, start or 0) if start is not None else ():
                seen, done, total = map(int, m.groups())
                if seen == epoch and 0 < done < total:
                    return done
            if self.proc.poll() is not None and not got:
                break
        self.proc.kill()
        raise AssertionError(f"epoch {epoch} never seen in flight; stdout:\n"
                             f"{self.log_path.read_text()[-2000:]}\nterminal:\n"
                             f"{self.text[-1000:]}")

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        while self.read(0.2) or self.proc.poll() is None:  # drain, so the bar never blocks
            pass
        os.close(self.master)
        return self.proc.returncode


def epochs_written(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(bigger_dir, reference,
                                                                   tmp_path):
    killed = tmp_path / "killed"
    watched = Watched(train_args(bigger_dir, killed), tmp_path / "stdout.log")
    watched.wait_inside_epoch(2)
    assert watched.stop(signal.SIGKILL) == -signal.SIGKILL
    # Killed inside epoch 2: its record was never written, the checkpoint is epoch 1's.
    assert epochs_written(killed) == 1
    assert torch.load(killed / "last.pt", weights_only=True)["epoch"] == 1
    assert json.loads((killed / "summary.json").read_text())["status"] == "running"
    result = run_main("train", f"resume={killed}")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    assert run_files(killed) == run_files(reference)
    assert not (killed / "last.pt").exists()  # model.pt has the final weights


@pytest.mark.slow
def test_sigkill_in_a_shared_prefix_then_resume_completes_every_arm_as_trained_alone(
        bigger_dir, reference, tmp_path):
    """trainer.epochs=1,2 sharing their first epoch: killed in epoch 2 of the group's
    training, the 1-epoch arm is already complete; the resumed sweep keeps it and writes the
    2-epoch arm from the group's last.pt. Both equal the runs trained alone, uninterrupted."""
    sweep = tmp_path / "sweep"
    args = [a for a in train_args(bigger_dir, sweep) if not a.startswith(("hydra.", "trainer.e"))]
    args += ["trainer.epochs=1,2", "reuse.shared_epochs=[1,2]", f"hydra.sweep.dir={sweep}"]
    watched = Watched(["train", "-m", *args[1:]], tmp_path / "stdout.log")
    watched.wait_inside_epoch(2)
    assert watched.stop(signal.SIGKILL) == -signal.SIGKILL
    (short,) = [p for p in sweep.iterdir() if p.name.startswith("0_")]
    assert json.loads((short / "summary.json").read_text())["status"] == "completed"
    (group,) = (sweep / ".shared_prefix").iterdir()
    assert torch.load(group / "last.pt", weights_only=True)["epoch"] == 1
    result = run_main("train", "-m", *args[1:], "resume=true")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and not (sweep / ".shared_prefix").exists()
    (long,) = [p for p in sweep.iterdir() if p.name.startswith("1_")]
    alone = tmp_path / "alone1"
    assert run_main(*train_args(bigger_dir, alone, "trainer.epochs=1")).returncode == 0

    def arm_files(run_dir):
        metrics, summary = run_files(run_dir)
        assert summary.pop("taken_from") == "trainer.epochs=2"
        return metrics, summary
    assert arm_files(short) == run_files(alone)
    assert arm_files(long) == run_files(reference)


@pytest.mark.slow
def test_ctrl_c_stops_after_the_batch_in_flight_with_exit_130(bigger_dir, tmp_path):
    run_dir = tmp_path / "run"
    watched = Watched(train_args(bigger_dir, run_dir), tmp_path / "stdout.log")
    done = watched.wait_inside_epoch(1)
    assert watched.stop(signal.SIGINT) == 130
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epoch"] == 1
    assert summary["batch"] >= done - 1 and summary["error"].startswith(
        f"interrupted in epoch 1 after batch {summary['batch']}")
    assert "SIGINT: stopping after this batch" in (tmp_path / "stdout.log").read_text()
    assert epochs_written(run_dir) == 0 and not (run_dir / "model.pt").exists()


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs here, in the main thread
        assert stop() and stop.signum == signal.SIGINT  # the loop ends after its batch
        with pytest.raises(errors.Interrupted, match="interrupted at once") as second:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert second.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_sigterm_records_the_resume_command_and_it_completes_the_run(bigger_dir, tmp_path):
    run_dir = tmp_path / "run"
    watched = Watched(train_args(bigger_dir, run_dir), tmp_path / "stdout.log")
    watched.wait_inside_epoch(2)
    assert watched.stop(signal.SIGTERM) == 143
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epoch"] == 2
    # The path as seen from where the command ran (ROOT), not this machine's absolute one.
    assert summary["resume"] == f"python -m mnistcnn train resume={os.path.relpath(run_dir, ROOT)}"
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1
    _python, _m, _module, *args = shlex.split(summary["resume"])
    result = run_main(*args)
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert epochs_written(run_dir) == 2
    again = run_main(*args)
    assert again.returncode == 0 and "already completed" in again.stdout


def test_divergence_is_recorded_and_reported_on_one_line(synthetic_dir, tmp_path):
    result = run_main("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
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
    real_save = run_folder.save_torch
    saves = []

    def disk_full_on_second_save(path, obj):
        saves.append(path)
        if len(saves) == 2:
            def fail(f):
                f.write(b"partial")
                raise OSError(28, "No space left on device")
            return run_folder.atomic_write(path, fail)
        return real_save(path, obj)

    monkeypatch.setattr(run_folder, "save_torch", disk_full_on_second_save)
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
    assert run_main("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                    "trainer.epochs=1", "report.enabled=false",
                    f"hydra.run.dir={run_dir}").returncode == 0
    with open(run_dir / "model.pt", "wb") as f:
        pickle.dump({"model": RunsCode(), "config": {}}, f)
    result = run_main("evaluate", f"run={run_dir}", cwd=tmp_path)  # PWNED would land here
    assert result.returncode == 2 and "cannot be loaded safely" in result.stderr
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_sweep_resume_skips_completed_and_continues_the_interrupted_job(bigger_dir, reference,
                                                                       tmp_path):
    sweep = tmp_path / "sweep"
    # Seed 0 runs second, so the job interrupted is the reference run's configuration.
    args = ["train", "-m", *train_args(bigger_dir, tmp_path / "unused")[1:], "seed=1,0",
            f"hydra.sweep.dir={sweep}"]
    watched = Watched(args, tmp_path / "stdout.log")

    def second_job_finished_epoch_1():
        return any(epochs_written(job) == 1 for job in sweep.glob("1_*"))

    watched.wait_inside_epoch(2, after=second_job_finished_epoch_1)
    watched.stop(signal.SIGKILL)
    first, second = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert json.loads((first / "summary.json").read_text())["status"] == "completed"
    assert epochs_written(second) == 1  # killed inside its epoch 2, after the checkpoint
    assert torch.load(second / "last.pt", weights_only=True)["epoch"] == 1
    assert not (sweep / "comparison.md").exists()
    completed = json.loads((first / "summary.json").read_text())

    result = run_main(*args, "resume=true")
    assert result.returncode == 0, result.stderr
    assert "already completed" in result.stdout and "resuming" in result.stdout
    assert json.loads((first / "summary.json").read_text()) == completed  # untouched
    rows = list(csv.DictReader((sweep / "comparison.csv").open()))
    assert [(r["status"], r["n"], r["seeds"]) for r in rows] == [("completed", "2", "1 0")]
    assert run_files(second) == run_files(reference)
