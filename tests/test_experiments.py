"""The eight study presets: each composes, every job of its sweep is a valid config, and
`quick=on` shrinks any of them to a smoke test."""

from __future__ import annotations

import csv
import itertools
import sys

import pytest
from conftest import run_main

from mnistcnn import cli
from mnistcnn.base.config import CONF_DIR, compose_config
from mnistcnn.runs import preflight

# Each study's model, what it varies (beyond the seed) and how many configurations that makes.
STUDIES = {
    "batchnorm": ("conv5x5", {"model.batchnorm"}, 2),
    "features": ("conv5x5", {"model.features", "trainer.epochs"}, 8),
    "activations": ("keras", {"model.activation"}, 3),
    "conv_depth": ("keras", {"model.conv_layers"}, 2),
    "neurons": ("classic", {"model.hidden"}, 2),
    "pooling": ("classic", {"model.pool"}, 2),
    "tiny": ("tiny", {"+variant"}, 5),
    "mobilenet": ("mobilenet", {"+variant", "optim"}, 6),
}
PRESETS = list(STUDIES)


def sweep_params(*overrides: str) -> dict[str, list[str]]:
    params = preflight.sweeper_config(list(overrides)).params
    return {k: str(v).split(",") for k, v in params.items()}


def test_every_study_has_a_preset():
    presets = {path.stem for path in (CONF_DIR / "experiment").glob("*.yaml")}
    assert set(STUDIES) <= presets
    assert presets - set(STUDIES) == {"speedrun"}  # the one preset that is not a study


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_with_cfg_job(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["mnistcnn"])
    cli.run_train([f"+experiment={name}", "--cfg", "job"])
    out = capsys.readouterr().out
    assert f"name: {STUDIES[name][0]}" in out and "seed: 0" in out


@pytest.mark.parametrize("name", PRESETS)
def test_preset_sweeps_its_study_over_3_seeds(name):
    params = sweep_params(f"+experiment={name}")
    assert params.pop("seed") == ["0", "1", "2"]
    _, keys, configs = STUDIES[name]
    assert set(params) == keys
    assert len(list(itertools.product(*params.values()))) == configs


@pytest.mark.parametrize("name", PRESETS)
def test_every_job_of_a_preset_is_a_valid_config(name):
    preflight.check_overrides([f"+experiment={name}"], multirun=True)  # UserError on a bad job


@pytest.mark.parametrize("order", ["after", "before"])
def test_quick_on_means_one_seed_one_epoch_1000_images_wherever_it_is_typed(order):
    overrides = ["+experiment=features", "quick=on"]
    overrides = overrides if order == "after" else overrides[::-1]
    params = sweep_params(*overrides)
    assert params["seed"] == ["0"] and params["trainer.epochs"] == ["1"]
    assert params["model.features"] == ["2", "4", "8", "32"]
    cfg = compose_config(overrides)
    assert cfg.trainer.epochs == 1 and cfg.data.limit == 1000


def test_the_tiny_study_arms():
    def arm(variant):
        return compose_config(["+experiment=tiny", f"+variant={variant}"])

    assert arm("tiny_10classes").data.classes is None
    grouped = arm("tiny_4classes_augment_dropout")
    assert {int(k): list(v) for k, v in grouped.data.classes.items()} == {
        0: [0, 6], 1: [1, 7], 2: [2, 3, 5, 8], 3: [4, 9]}
    assert grouped.data.augment.rotation == 10 and grouped.model.dropout == 0.3
    assert arm("tiny_4classes_batchnorm").model.batchnorm
    assert arm("tiny_4classes").trainer.batch_size == 20


def test_a_preset_runs_with_its_quick_switch(synthetic_dir, tmp_path):
    result = run_main("train", "-m", "+experiment=pooling", "quick=on",
                      f"data.dir={synthetic_dir}", "data.val_size=200", "report.enabled=false",
                      f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    assert sorted(r["model.pool"] for r in rows) == ["avg", "max"]
    assert all(r["epochs"] == "1" and r["seeds"] == "0" for r in rows)


def test_speedrun_preset_runs_one_configuration_over_5_seeds():
    assert sweep_params("+experiment=speedrun") == {"seed": ["0", "1", "2", "3", "4"]}
    preflight.check_overrides(["+experiment=speedrun"], multirun=True)
    cfg = compose_config(["+experiment=speedrun"])
    assert cfg.model.name == "conv5x5" and cfg.model.batchnorm and cfg.sched.name == "onecycle"
    assert cfg.data.val_size == 0 and not cfg.report.enabled
