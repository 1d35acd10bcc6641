"""`train rerun=RUN_DIR`: the saved config composed again (overrides on top), the same
numbers on the CPU, and one warning line when the code that made RUN_DIR differs; the code
version every summary.json records."""

from __future__ import annotations

import json

import pytest
from conftest import run_main
from omegaconf import OmegaConf

from mnistcnn.base import provenance
from mnistcnn.base.config import compose_config, to_plain
from mnistcnn.base.errors import UserError
from mnistcnn.runs import rerun

TIMINGS = {"epoch_time_s"}


def saved_run(folder, *overrides):
    """A run folder as `train` leaves it, as far as rerun reads it."""
    (folder / ".hydra").mkdir(parents=True)
    cfg = compose_config(list(overrides))
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    return to_plain(cfg)


def test_rerun_composes_the_saved_config_with_overrides_on_top(tmp_path):
    # A preset's values and a model other than the default: all come from the saved file.
    saved = saved_run(tmp_path / "run", "+experiment=pooling", "model.pool=avg", "optim=sgd",
                      "optim.lr=0.05", "seed=4", "resume=true")
    again = to_plain(compose_config(rerun.expand([f"rerun={tmp_path / 'run'}", "seed=5"])))
    assert again == {**saved, "seed": 5, "resume": False}


def test_a_group_option_replaces_that_groups_saved_values(tmp_path):
    saved = saved_run(tmp_path / "run", "model=classic", "model.hidden=25", "optim.lr=0.01")
    again = to_plain(compose_config(rerun.expand([f"rerun={tmp_path / 'run'}", "model=tiny"])))
    assert again["model"] == to_plain(compose_config(["model=tiny"]))["model"]
    assert again["optim"] == saved["optim"]


def test_rerun_refuses_presets_and_folders_that_are_not_runs(tmp_path):
    saved_run(tmp_path / "run")
    with pytest.raises(UserError, match=r"already holds what quick= set; pass KEY=VALUE"):
        rerun.expand([f"rerun={tmp_path / 'run'}", "quick=on"])
    with pytest.raises(UserError, match=r"is not a run folder \(no .hydra/config.yaml\)"):
        rerun.expand([f"rerun={tmp_path}"])
    assert rerun.expand(["seed=1"]) == ["seed=1"]


def test_differences_name_what_changed_and_uncommitted_trees():
    now = provenance.record()
    assert provenance.differences(dict(now, git_dirty=False)) == (
        ["the tree has uncommitted changes now"] if now["git_dirty"] else [])
    old = dict(now, git_commit="a" * 40, torch="1.0", git_dirty=True)
    changed = provenance.differences(old)
    assert changed[:2] == [f"git_commit {'a' * 12} -> {provenance.short(now['git_commit'])}",
                           f"torch 1.0 -> {now['torch']}"]
    assert "the run's tree had uncommitted changes" in changed
    assert provenance.differences({"torch": "1.0"}) == [
        "no code version recorded (the run predates it)"]


def epochs(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rerun_of_a_cpu_run_gives_the_same_numbers_and_says_when_the_code_differs(
        synthetic_dir, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    result = run_main("train", f"data.dir={synthetic_dir}", "data.val_size=200", "model=tiny",
                      "data.limit=500", "trainer.epochs=2", "trainer.device=cpu", "seed=7",
                      "report.enabled=false", f"hydra.run.dir={first}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((first / "summary.json").read_text())
    assert {k: summary[k] for k in provenance.record()} == provenance.record()
    # As if made by another commit: the rerun says so in one line, and runs all the same.
    (first / "summary.json").write_text(json.dumps(dict(summary, git_commit="0" * 40)))

    result = run_main("train", f"rerun={first}", f"hydra.run.dir={again}")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"git_commit {'0' * 12} -> " in warnings[0]
    assert epochs(again) == epochs(first)
    rerun_summary = json.loads((again / "summary.json").read_text())
    assert rerun_summary["test/acc"] == summary["test/acc"]
    assert rerun_summary["test/loss"] == summary["test/loss"]
    assert OmegaConf.load(again / ".hydra" / "config.yaml") == \
        OmegaConf.load(first / ".hydra" / "config.yaml")
