"""The benchmark script: its summaries on hand-made runs, and one smoke run of the real thing.
No speed is asserted: timings belong to the benchmark itself."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import ROOT

from mnistcnn.base.provenance import recorded_command

spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def run(epoch_s, test_acc, images=1000):
    return {"images": images, "params": 10, "epoch_s": epoch_s, "test_acc": test_acc,
            "peak_rss_mb": 100.0}


def test_time_to_target_counts_training_time_up_to_the_first_epoch_that_reaches_it():
    assert bench.time_to_target(run([3.0, 1.0, 1.0], [0.90, 0.975, 0.99]), 0.97) == 4.0
    assert bench.time_to_target(run([3.0], [0.99]), 0.97) == 3.0
    assert bench.time_to_target(run([3.0, 1.0], [0.90, 0.95]), 0.97) is None


def test_summary_separates_the_first_epoch_and_needs_every_seed_for_the_target():
    s = bench.summarize([run([3.0, 1.0, 2.0], [0.9, 0.98, 0.98]),
                         run([5.0, 2.0, 3.0], [0.9, 0.9, 0.96])], 0.97)
    assert s["first_epoch_s"] == 4.0 and s["steady_epoch_s"] == 2.0
    assert s["images_per_s"] == 500.0  # from the steady epoch
    assert s["test_acc"] == pytest.approx(0.97)
    assert s["test_acc_std"] == pytest.approx(0.01414, 1e-3)
    assert s["time_to_target_s"] is None  # the second seed never got there
    one_epoch = bench.summarize([run([4.0], [0.98])], 0.97)
    assert one_epoch["steady_epoch_s"] is None and one_epoch["images_per_s"] == 250.0
    assert one_epoch["time_to_target_s"] == 4.0 and one_epoch["test_acc_std"] == 0.0


def test_speedup_is_steady_speed_and_accuracy_must_agree():
    def side(epoch, accs):
        return bench.summarize([run([9.0, epoch], [a, a]) for a in accs], 0.97)
    sides = {"textbook": side(4.0, [0.980]), "mnistcnn": side(1.0, [0.981])}
    vs = bench.speedups(sides)["textbook"]
    assert vs["speedup"] == 4.0 and vs["accuracy_agrees"]
    sides["mnistcnn"] = side(1.0, [0.990])
    assert not bench.speedups(sides)["textbook"]["accuracy_agrees"]
    # With several seeds a gap within two standard errors is seed noise, not a difference.
    sides = {"textbook": side(4.0, [0.95, 0.97, 0.99]), "mnistcnn": side(1.0, [0.96, 0.98, 1.0])}
    assert bench.speedups(sides)["textbook"]["accuracy_agrees"]


def test_the_recorded_command_has_paths_relative_to_where_it_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    typed = ["--out", str(tmp_path / "res"), "--models", "classic",
             f"--data-dir={tmp_path / 'mnist'}"]
    command = recorded_command(["python", "scripts/bench.py"], typed, bench.PATH_OPTIONS)
    assert command == "python scripts/bench.py --out res --models classic --data-dir=mnist"


@pytest.mark.slow
def test_bench_runs_each_side_and_writes_a_well_formed_report(synthetic_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", "--models", "classic", "--limit", "1000",
         "--epochs", "2", "--sides", "textbook,mnistcnn", "--device", "cpu",
         "--override", "model.hidden=25", "--data-dir", str(synthetic_dir),
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {"machine", "command", "settings", "results"} <= set(report)
    assert " /" not in report["command"]  # no absolute path of this machine
    assert report["settings"]["limit"] == 1000 and report["settings"]["epochs"] == 2
    (row,) = report["results"]
    assert row["model"] == "classic" and "lightning" not in row
    for side in ("textbook", "mnistcnn"):
        s = row[side]
        assert s["images"] == 1000 and len(s["runs"][0]["epoch_s"]) == 2
        # the override reaches every side's model: classic with 25 hidden units
        assert s["params"] == 13_565
        assert s["steady_epoch_s"] > 0 and s["images_per_s"] == 1000 / s["steady_epoch_s"]
        assert s["test_acc"] > 0.6  # the synthetic digits are easy
    vs = row["vs"]["textbook"]
    assert vs["speedup"] == row["mnistcnn"]["images_per_s"] / row["textbook"]["images_per_s"]
    md = (tmp_path / "bench.md").read_text()
    assert "| classic | textbook |" in md and "| classic | mnistcnn (eager) |" in md
    # the loop that was timed: on a CPU the eager one, and why
    assert row["mnistcnn"]["train_path"] == "eager"
    assert row["mnistcnn"]["runs"][0]["train_path"] == {
        "train_path": "eager",
        "train_path_reason": "CUDA graphs need a GPU and this run trains on cpu"}
