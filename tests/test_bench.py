"""A quick benchmark smoke run: both pipelines train, agree in accuracy, bench.json is whole.
No speed is asserted: timings belong to the benchmark itself."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_bench_runs_both_paths_and_writes_a_well_formed_report(synthetic_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/bench.py", "--models", "classic", "--limit", "1500",
         "--device", "cpu", "--data-dir", str(synthetic_dir), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {"machine", "command", "settings", "results"} <= set(report)
    assert report["settings"]["limit"] == 1500
    (row,) = report["results"]
    assert row["model"] == "classic"
    for side in ("textbook", "mnistcnn"):
        assert row[side]["images"] == 1500
        assert row[side]["images_per_s"] > 0 and row[side]["peak_rss_mb"] > 0
    # The synthetic digits are easy: both pipelines learn them, to about the same accuracy
    # (one epoch on 1,500 images leaves room for a few points of seed noise).
    accs = row["textbook"]["test_acc"], row["mnistcnn"]["test_acc"]
    assert min(accs) > 0.6 and abs(accs[0] - accs[1]) < 0.15, accs
    assert row["accuracy_agrees"] == (abs(accs[0] - accs[1]) <= 0.003)
    assert row["speedup"] == row["mnistcnn"]["images_per_s"] / row["textbook"]["images_per_s"]
    assert "| classic |" in (tmp_path / "bench.md").read_text()
