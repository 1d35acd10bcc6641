"""The comparison logic on hand-made run folders: no training, milliseconds per test."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from mnistcnn.base import run_reader
from mnistcnn.base.errors import UserError
from mnistcnn.reporting import comparison

BASE = {"model": {"name": "classic", "hidden": 50, "pool": "max", "dropout": 0.5},
        "data": {"name": "mnist", "dir": None, "classes": None, "augment": {"rotation": 0.0}},
        "optim": {"name": "adam", "lr": 0.001}, "trainer": {"epochs": 2}, "seed": 0}


def config(seed=0, **changes):
    """BASE with dotted-key changes, e.g. config(**{"model.hidden": 25})."""
    cfg = json.loads(json.dumps(BASE))
    cfg["seed"] = seed
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def make_run(folder, cfg, test_acc=0.98, status="completed", error=None, choices=None):
    """A run folder as `train` leaves it: config, Hydra's record of the group choices,
    summary and a two-epoch metrics.jsonl."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    choices = {"model": cfg["model"]["name"], "hydra/launcher": "basic", **(choices or {})}
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    summary = {"status": status, "seed": cfg["seed"], "params": {"total": 21840}, "epochs": 2}
    if status == "completed":
        summary.update({"final/train/acc": test_acc - 0.01, "final/val/acc": test_acc,
                        "test/acc": test_acc, "test/loss": 1 - test_acc,
                        "test/macro_recall": test_acc, "train_time_s": 10.0})
    if error:
        summary["error"] = error
    (folder / "summary.json").write_text(json.dumps(summary))
    records = [{"epoch": e, "train/acc": test_acc - 0.1 / e, "train/loss": 0.5 / e,
                "val/acc": test_acc - 0.05 / e, "val/loss": 0.4 / e} for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def build(tmp_path, specs):
    """specs: (config, test_acc) or (config, test_acc, status, error) per job, in job order."""
    for i, spec in enumerate(specs):
        make_run(tmp_path / f"{i}_job", *spec)
    return comparison.build(run_reader.load_runs([tmp_path]))


def test_keys_that_do_not_change_the_experiment_do_not_split_rows(tmp_path):
    comp = build(tmp_path, [(config(0, **{"data.dir": "/a"}), 0.97),
                            (config(1, **{"data.dir": "/b"}), 0.99)])
    assert comp.columns == [] and len(comp.rows) == 1 and comp.rows[0].label == "all runs"


def test_seeds_pool_into_one_row_with_mean_std_and_n(tmp_path):
    comp = build(tmp_path, [(config(0), 0.97), (config(1), 0.99),
                            (config(0, **{"model.hidden": 25}), 0.95),
                            (config(1, **{"model.hidden": 25}), 0.96)])
    assert comp.columns == ["model.hidden"]
    header, body = comparison.main_table(comp)
    assert header[:4] == ["model.hidden", "params", "epochs", "n"]
    assert [row[0] for row in body] == ["50", "25"]  # sorted by test accuracy
    test = header.index("test acc (%)")
    assert body[0][test] == "98.00 ± 1.41" and body[0][3] == "2"
    assert body[1][header.index("params")] == "21,840"


def test_sorted_by_mean_test_accuracy_failures_last(tmp_path):
    comp = build(tmp_path, [(config(**{"model.hidden": 10}), 0.90),
                            (config(**{"model.hidden": 20}), 0.0, "diverged", "loss nan"),
                            (config(**{"model.hidden": 30}), 0.99),
                            (config(**{"model.hidden": 40}), 0.95)])
    assert [r.values["model.hidden"] for r in comp.rows] == ["30", "40", "10", "20"]
    header, body = comparison.main_table(comp)
    assert header[-2:] == ["status", "error"]
    assert body[-1][-2].startswith("diverged (seed 0, 1_job)") and body[-1][-1] == "loss nan"
    assert [r.path.name for r in comp.failed] == ["1_job"]
    assert "1_job (diverged: loss nan)" in comparison.failure_line(comp)


def test_a_failed_seed_is_its_own_row_not_averaged_away(tmp_path):
    comp = build(tmp_path, [(config(0), 0.98), (config(1), 0.0, "failed", "boom")])
    assert [(r.status, len(r.runs)) for r in comp.rows] == [("completed", 1), ("failed", 1)]


def test_the_gap_note_gives_the_lead_and_its_spread_and_tests_nothing(tmp_path):
    comp = build(tmp_path, [(config(0, **{"model.pool": "max"}), 0.980),
                            (config(1, **{"model.pool": "max"}), 0.990),
                            (config(0, **{"model.pool": "avg"}), 0.978),
                            (config(1, **{"model.pool": "avg"}), 0.986)])
    note = comparison.gap_note(comp.rows)
    assert note.startswith("The best (pool=max) leads the runner-up (pool=avg) by 0.30 points")
    assert "± 0.71 and ± 0.57" in note and "This table tests nothing" in note
    assert "seed spread" not in note


def test_single_runs_are_flagged_as_without_spread(tmp_path):
    comp = build(tmp_path, [(config(**{"model.pool": "max"}), 0.99),
                            (config(**{"model.pool": "avg"}), 0.98)])
    assert "from single runs: repeat the sweep with seed=0,1,2" in comparison.gap_note(comp.rows)


def test_group_choice_hides_the_knobs_it_implies(tmp_path):
    tiny = config(**{"model": {"name": "tiny", "channels": [16, 8, 4], "pool": "max",
                               "dropout": 0.0}})
    comp = build(tmp_path, [(config(), 0.99), (tiny, 0.9)])
    assert comp.columns == ["model.name"]
    assert set(comp.implied) == {"model.hidden", "model.dropout", "model.channels"}
    assert any("`model.channels`" in n for n in comp.notes)
    assert comp.rows[1].label == "model=tiny"


def test_a_knob_varied_within_one_model_stays_a_column(tmp_path):
    tiny = config(**{"model": {"name": "tiny", "pool": "max", "dropout": 0.0}})
    comp = build(tmp_path, [(config(**{"model.dropout": 0.1}), 0.99),
                            (config(**{"model.dropout": 0.2}), 0.98), (tiny, 0.9)])
    assert comp.columns == ["model.name", "model.dropout"]


def test_a_variant_choice_names_the_row_and_implies_its_keys(tmp_path):
    grouped = config(**{"data.classes": {0: [0, 6], 1: [1, 7], 2: [2, 3, 5, 8], 3: [4, 9]}})
    augmented = config(**{"data.classes": grouped["data"]["classes"],
                          "data.augment.rotation": 10.0})
    for i, (cfg, variant) in enumerate([(config(), "tiny_10classes"), (grouped, "tiny_4classes"),
                                        (augmented, "tiny_4classes_augment")]):
        make_run(tmp_path / f"{i}_job", cfg, 0.9 + i / 100, choices={"variant": variant})
    comp = comparison.build(run_reader.load_runs([tmp_path]))
    assert comp.columns == ["variant"]  # not model (same for all) nor hydra/launcher
    assert comp.implied == ["data.classes", "data.augment.rotation"]
    assert [r.label for r in comp.rows][0] == "variant=tiny_4classes_augment"


def test_class_groupings_are_one_readable_column(tmp_path):
    grouped = config(**{"data.classes": {0: [0, 6], 1: [1, 7], 2: [2, 3, 5, 8], 3: [4, 9]},
                        "data.augment.rotation": 10.0})
    comp = build(tmp_path, [(config(), 0.99), (grouped, 0.97)])
    assert comp.columns == ["data.classes", "data.augment.rotation"]
    assert comp.rows[1].values["data.classes"] == "{0:[0,6],1:[1,7],2:[2,3,5,8],3:[4,9]}"
    assert comp.rows[0].label == "classes=null, rotation=0.0"


def test_epoch_tables_put_configurations_side_by_side(tmp_path):
    comp = build(tmp_path, [(config(0), 0.98), (config(1), 0.96),
                            (config(0, **{"model.hidden": 25}), 0.90)])
    header, body = comparison.epoch_table(comp, "train/loss", "loss")
    assert header == ["epoch", "hidden=50", "hidden=25"]
    assert body == [["1", "0.5000 ± 0.0000", "0.5000"], ["2", "0.2500 ± 0.0000", "0.2500"]]


def test_write_produces_every_file(tmp_path):
    comp = build(tmp_path / "sweep", [(config(0), 0.98), (config(1), 0.97),
                                      (config(0, **{"model.hidden": 25}), 0.96),
                                      (config(1, **{"model.hidden": 25}), 0.0, "failed", "x")])
    written = comparison.write(comp, tmp_path / "sweep")
    assert [p.name for p in written] == comparison.OUTPUT_FILES
    assert all(p.is_file() for p in written)
    rows = list(csv.DictReader((tmp_path / "sweep" / "comparison.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
    assert float(rows[0]["test/acc_mean"]) == pytest.approx(0.975)  # fractions in files
    assert rows[0]["n"] == "2" and rows[0]["seeds"] == "0 1" and rows[2]["error"] == "x"
    md = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "| 0_job | hidden=50 | 0 | completed | 98.00 |" in md  # paths relative to the sweep
    assert "## Per epoch: val loss" in md
    assert "<td>97.50 ± 0.71</td>" in (tmp_path / "sweep" / "comparison.html").read_text()
    for png in ("curves_acc.png", "curves_loss.png", "test_acc.png"):
        assert (tmp_path / "sweep" / png).read_bytes()[:4] == b"\x89PNG"


def test_a_job_without_summary_is_reported_missing(tmp_path):
    (tmp_path / "0_job" / ".hydra").mkdir(parents=True)
    (tmp_path / "0_job" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config()))
    comp = comparison.build(run_reader.load_runs([tmp_path]))
    assert comp.rows[0].status == "missing" and comp.failed


def test_find_runs_orders_jobs_and_rejects_empty_folders(tmp_path):
    for name in ("10_b", "2_a"):
        make_run(tmp_path / "sweep" / name, config())
    assert [p.name for p in run_reader.find_runs([tmp_path / "sweep"])] == ["2_a", "10_b"]
    assert run_reader.find_runs([tmp_path / "sweep" / "2_a"]) == [tmp_path / "sweep" / "2_a"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no run folders"):
        run_reader.find_runs([tmp_path / "empty"])
    with pytest.raises(UserError, match="does not exist"):
        run_reader.find_runs([tmp_path / "nope"])


def test_default_out_dir_rebuilds_a_sweep_in_place(tmp_path):
    make_run(tmp_path / "sweep" / "0_a", config())
    assert comparison.default_out_dir([tmp_path / "sweep"]) == tmp_path / "sweep"
    assert "comparisons" in str(comparison.default_out_dir([tmp_path / "sweep" / "0_a"]))


def test_a_run_outside_the_comparison_is_named_from_where_the_command_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert comparison._where(tmp_path / "runs" / "a", tmp_path / "cmp") == "runs/a"
    assert comparison._where(tmp_path / "cmp" / "0_seed=1", tmp_path / "cmp") == "0_seed=1"
