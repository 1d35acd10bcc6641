"""Epoch arms that share their prefix (runs/shared_prefix.py): a sweep of trainer.epochs
trains each group once, to the longest, and every arm it writes is, file for file, what
training that arm alone writes, apart from times and the note that says where it came from."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_main

from mnistcnn.base.config_keys import NOT_SETTINGS, flatten
from mnistcnn.runs import lifecycle
from mnistcnn.studies import book

TIMINGS = {"started", "finished", "train_time_s", "data_load_s", "report_time_s",
           "epoch_time_s"}
SAME_BYTES = ("predictions.csv", "confusion.csv", "classification.csv")


def common(data_dir, *extra):
    return [f"data.dir={data_dir}", "data.val_size=200", "model=tiny", "data.limit=300",
            "trainer.device=cpu", "report.enabled=false", *extra]


def jobs(sweep):
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())


def without(record: dict, keys=TIMINGS) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def files(run):
    """A run's files as a comparison sees them: no times, the checkpoint's tensors and its
    config's settings (a config also records where it ran and how it was reused)."""
    metrics = [without(json.loads(line)) for line in (run / "metrics.jsonl").open()]
    summary = without(json.loads((run / "summary.json").read_text()), TIMINGS | {"taken_from"})
    ckpt = torch.load(run / "model.pt", weights_only=True)
    settings = {k: v for k, v in flatten(ckpt["config"]).items()
                if not k.startswith(NOT_SETTINGS) and k != "resume"}
    return (metrics, summary, {k: v.tolist() for k, v in ckpt["model"].items()}, settings,
            {name: (run / name).read_bytes() for name in SAME_BYTES})


@pytest.mark.parametrize("extra", [
    [],
    # Early stopping at epoch 2 (epoch 1 stays best: no later epoch beats it by 1), keeping
    # the best weights: the 3-epoch arm stops early, the 1-epoch arm does not.
    ["trainer.keep=best", "trainer.early_stop.patience=1", "trainer.early_stop.min_delta=1"],
], ids=["last", "best-and-early-stop"])
def test_each_arm_is_the_run_trained_alone(synthetic_dir, tmp_path, extra):
    sweep = tmp_path / "sweep"
    result = run_main("train", "-m", *common(synthetic_dir, *extra), "trainer.epochs=1,3",
                      "reuse.shared_epochs=[1,3]", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("share their first epochs: training to 3") == 1
    assert not (sweep / ".shared_prefix").exists()  # every arm taken by its job
    short, long = jobs(sweep)
    for job, epochs in ((short, 1), (long, 3)):
        summary = json.loads((job / "summary.json").read_text())
        assert summary["taken_from"] == "trainer.epochs=3" and summary["status"] == "completed"
        alone = tmp_path / f"alone{epochs}"
        result = run_main("train", *common(synthetic_dir, *extra), f"trainer.epochs={epochs}",
                          f"hydra.run.dir={alone}")
        assert result.returncode == 0, result.stderr
        assert files(job) == files(alone)
    if extra:
        summary = json.loads((long / "summary.json").read_text())
        assert summary["epochs"] == 2 and summary["stopped_early"] is True
    md = book.markdown(book.load(tmp_path, ["sweep"], figures=False))
    assert "| runs | 2, of which 1 trained on their own, 1 written from a longer run's first " \
           "epochs (`taken_from`) |" in md


def test_a_schedule_spread_over_the_epochs_trains_each_arm_alone(synthetic_dir, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_main("train", "-m", *common(synthetic_dir), "trainer.epochs=1,2",
                      "sched=cosine", "reuse.shared_epochs=[1,2]", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert "not shared: sched=cosine spreads over the epochs" in result.stdout
    assert all("taken_from" not in json.loads((job / "summary.json").read_text())
               for job in jobs(sweep))


@pytest.mark.slow  # an interrupted sweep and its resume (kill -9: test_robustness.py)
def test_an_interrupted_group_keeps_the_arm_it_wrote_and_a_resume_writes_the_rest(
        synthetic_dir, tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", *common(synthetic_dir), "trainer.epochs=1,3",
            "reuse.shared_epochs=[1,3]", f"hydra.sweep.dir={sweep}"]
    # Ctrl-C as soon as the 1-epoch arm is written, in the group's second epoch.
    monkeypatch.setattr(lifecycle.StopOnSignal, "__call__",
                        lambda self: any(sweep.glob("0_*/summary.json")))
    result = run_main(*args)
    assert result.returncode == 130, result.stderr
    monkeypatch.undo()
    (short,) = jobs(sweep)
    assert json.loads((short / "summary.json").read_text())["status"] == "completed"
    (group,) = (sweep / ".shared_prefix").iterdir()
    assert json.loads((group / "summary.json").read_text())["status"] == "interrupted"
    result = run_main(*args, "resume=true")
    assert result.returncode == 0, result.stderr
    assert "already completed" in result.stdout and "resuming" in result.stdout
    alone = tmp_path / "alone"
    assert run_main("train", *common(synthetic_dir), "trainer.epochs=3",
                    f"hydra.run.dir={alone}").returncode == 0
    assert files(jobs(sweep)[1]) == files(alone)
    assert not (sweep / ".shared_prefix").exists()
