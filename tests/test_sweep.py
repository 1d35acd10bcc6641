"""Sweeps end in a comparison: multiruns through the CLI's entry point on synthetic data, one
epoch each; in this process, but as real subprocesses for the launchers that start processes."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml
from conftest import run_cli, run_main
from omegaconf import OmegaConf

from mnistcnn.__main__ import main
from mnistcnn.base.config import compose_config
from mnistcnn.base.errors import UserError
from mnistcnn.data import dataset
from mnistcnn.runs.preflight import check_overrides

# docs/sweeps-and-studies.md's list of what a multirun writes into its sweep folder.
OUTPUT_FILES = ["comparison.md", "comparison.csv", "comparison.html", "curves_acc.png",
                "curves_loss.png", "test_acc.png"]
# The cheapest study model, one epoch on 500 images, no per-run report: about a second a job.
FAST = ["model=classic", "data.val_size=200", "data.limit=500", "trainer.epochs=1",
        "report.enabled=false"]
# One torch thread per process: the cores are shared (parallel launchers, other tests), and
# an oversubscribed thread pool spins, making a one-second job take ten.
ENV = {"OMP_NUM_THREADS": "1"}


def sweep(sweep_dir, data_dir, *overrides, in_process=True, env=ENV):
    """The sweep through the CLI's entry point: in this process unless a launcher makes
    processes of its own (then as a real subprocess, as a user runs it)."""
    args = ["train", "-m", f"data.dir={data_dir}", *FAST, f"hydra.sweep.dir={sweep_dir}",
            *overrides]
    if in_process:
        return run_main(*args)
    return run_cli(*args, env=env)


def table(sweep_dir):
    return list(csv.DictReader((sweep_dir / "comparison.csv").open()))


@pytest.fixture(scope="module")
def grid(synthetic_dir, tmp_path_factory):
    """A 2x2 sweep: hidden 20/30 x max/avg pooling, one seed."""
    sweep_dir = tmp_path_factory.mktemp("grid")
    result = sweep(sweep_dir, synthetic_dir, "model.hidden=20,30", "model.pool=max,avg")
    assert result.returncode == 0, result.stderr
    return sweep_dir, result


def test_a_2x2_sweep_writes_the_comparison_with_4_rows(grid):
    sweep_dir, result = grid
    for name in OUTPUT_FILES:
        assert (sweep_dir / name).is_file(), name
    rows = table(sweep_dir)
    assert len(rows) == 4
    assert list(rows[0])[:4] == ["model.pool", "model.hidden", "params", "epochs"]  # config order
    assert {(r["model.hidden"], r["model.pool"]) for r in rows} == {
        ("20", "max"), ("20", "avg"), ("30", "max"), ("30", "avg")}
    means = [float(r["test/acc_mean"]) for r in rows]
    assert means == sorted(means, reverse=True)
    md = (sweep_dir / "comparison.md").read_text()
    header = md.split("\n\n")[2].splitlines()[0]
    assert header.startswith("| model.pool | model.hidden | params | epochs | n | train acc (%)")
    assert "macro recall (%) | train time (s) |" in header
    assert "| model.pool | model.hidden |" in result.stdout  # the table ends the sweep's output


def test_compare_on_two_single_runs_names_the_differing_key(grid, tmp_path, capsys):
    sweep_dir, _ = grid
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and "hidden=20" in p.name)
    for name, job in zip(("run_a", "run_b"), jobs, strict=True):  # max and avg pooling
        shutil.copytree(job, tmp_path / name)
    main(["compare", str(tmp_path / "run_a"), str(tmp_path / "run_b"),
          "--out", str(tmp_path / "cmp")])
    assert "Keys that differ: `model.pool`." in capsys.readouterr().out
    assert [list(r)[0] for r in table(tmp_path / "cmp")] == ["model.pool", "model.pool"]
    assert (tmp_path / "cmp" / "test_acc.png").is_file()


def test_compare_rejects_a_folder_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(tmp_path)])
    assert exit_.value.code == 2 and "holds no run folders" in capsys.readouterr().err


@pytest.fixture(scope="module")
def buggy(synthetic_dir, tmp_path_factory):
    """2 configs x 3 seeds, where every job with seed 2 hits a (simulated) bug."""
    sweep_dir = tmp_path_factory.mktemp("buggy")
    loaded = dataset.load

    def load(data, device, seed, *args, **kwargs):  # the job's config passes every check
        if seed == 2:
            raise RuntimeError("simulated bug in job with seed 2")
        return loaded(data, device, seed, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataset, "load", load)
        return sweep_dir, sweep(sweep_dir, synthetic_dir, "model.hidden=20,30", "seed=0,1,2")


def test_seeds_pool_into_mean_std_with_n_2(buggy):
    sweep_dir, _ = buggy
    completed = [r for r in table(sweep_dir) if r["status"] == "completed"]
    assert [(r["n"], r["seeds"]) for r in completed] == [("2", "0 1"), ("2", "0 1")]
    assert all(r["test/acc_std"] != "" for r in completed)
    md = (sweep_dir / "comparison.md").read_text()
    assert md.count(" ± ") >= 2 * 6  # train/val/test acc, loss, recall, time per row


def test_a_failed_job_is_a_row_and_the_sweep_exits_non_zero(buggy):
    sweep_dir, result = buggy
    failed = [r for r in table(sweep_dir) if r["status"] != "completed"]
    assert [(r["status"], r["seeds"]) for r in failed] == [("failed", "2"), ("failed", "2")]
    assert all(r["error"] == "simulated bug in job with seed 2" for r in failed)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 6 jobs did not complete: 2_") and "seed=2" in last
    log = next(sweep_dir.glob("2_*/train.log")).read_text()
    assert "Traceback" in log and "RuntimeError" in log  # the bug keeps its traceback


def test_a_diverged_job_lets_the_others_finish(synthetic_dir, tmp_path):
    result = sweep(tmp_path, synthetic_dir, "optim=sgd", "model.dropout=0",
                   "optim.lr=1e12,0.01")
    assert result.returncode == 1
    rows = {float(r["optim.lr"]): r for r in table(tmp_path)}
    assert rows[1e12]["status"] == "diverged" and "non-finite loss" in rows[1e12]["error"]
    assert rows[0.01]["status"] == "completed" and 0 <= float(rows[0.01]["test/acc_mean"]) <= 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 jobs did not complete: 0_") and "diverged" in last


def needs_plugin(name: str) -> None:
    """`make test` installs the sweep extra; a bare `pip install -e .[dev]` skips these."""
    pytest.importorskip(f"hydra_plugins.{name}", reason="pip install -e '.[sweep]'")


@pytest.mark.slow
def test_joblib_launcher_runs_a_2_job_sweep(synthetic_dir, tmp_path):
    needs_plugin("hydra_joblib_launcher")
    # No OMP_NUM_THREADS: each job takes its share of the cores itself (jobs.take_share),
    # and says so first in its log (formerly test_jobs.py's own joblib sweep). The epoch arms
    # of a seed share their first epoch (runs/shared_prefix.py): the two jobs of a seed run
    # at once, so one trains the group while the other waits its turn, then takes its arm.
    result = sweep(tmp_path, synthetic_dir, "seed=0,1", "trainer.epochs=1,2",
                   "reuse.shared_epochs=[1,2]", "hydra/launcher=joblib",
                   "hydra.launcher.n_jobs=2", in_process=False,
                   env={"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": None})
    assert result.returncode == 0, result.stderr
    assert [r["n"] for r in table(tmp_path)] == ["2", "2"]
    logs = [log.read_text() for log in sorted(tmp_path.glob("*/train.log"))]
    assert len(logs) == 4
    for num, log in enumerate(logs):
        assert log.startswith(f"job {num} (2 jobs at once): torch threads: ")
    assert sum("share their first epochs: training to 2" in log for log in logs) == 2
    assert sum("taken from the trainer.epochs=2 run" in log for log in logs) == 2
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")]
    assert [s["taken_from"] for s in summaries] == ["trainer.epochs=2"] * 4
    assert not (tmp_path / ".shared_prefix").exists()


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_2_job_sweep(synthetic_dir, tmp_path):
    needs_plugin("hydra_submitit_launcher")
    result = sweep(tmp_path, synthetic_dir, "seed=0,1", "hydra/launcher=submitit_local",
                   "hydra.launcher.timeout_min=10", in_process=False)
    assert result.returncode == 0, result.stderr
    assert [r["n"] for r in table(tmp_path)] == ["2"]
    assert (tmp_path / ".submitit").is_dir()


def test_optuna_sweeper_maximises_validation_accuracy(synthetic_dir, tmp_path):
    needs_plugin("hydra_optuna_sweeper")
    result = sweep(tmp_path, synthetic_dir, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.direction=maximize", "hydra.sweeper.sampler.seed=0",
                   "optim.lr=interval(0.0005,0.005)")
    assert result.returncode == 0, result.stderr
    assert len(table(tmp_path)) == 2 and list(table(tmp_path)[0])[0] == "optim.lr"
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    jobs = [(json.loads((job / "summary.json").read_text())["final/val/acc"],
             OmegaConf.load(job / ".hydra" / "config.yaml").optim.lr)
            for job in tmp_path.iterdir() if (job / "summary.json").is_file()]
    best = max(acc for acc, _ in jobs)
    assert len(jobs) == 2 and results["best_value"] == pytest.approx(best)
    # The best job's lr (either, when both reach the same accuracy).
    assert any(results["best_params"]["optim.lr"] == pytest.approx(lr)
               for acc, lr in jobs if acc == best)


def test_optuna_refuses_to_minimise_accuracy():
    needs_plugin("hydra_optuna_sweeper")
    with pytest.raises(UserError, match="hydra.sweeper.direction=maximize"):
        check_overrides(["hydra/sweeper=optuna", "optim.lr=interval(0.0005,0.005)"],
                        multirun=True)


def test_submitit_slurm_settings_compose():
    needs_plugin("hydra_submitit_launcher")
    cfg = compose_config(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                          "hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=120",
                          "hydra.launcher.array_parallelism=8"], with_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1
    assert launcher._target_.endswith("SlurmLauncher")


def test_a_value_with_a_slash_names_a_flat_job_folder(synthetic_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_main("train", "-m", f"data.dir={synthetic_dir}", *FAST,
                      "trainer.early_stop.monitor=val/loss,val/acc",
                      f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name.split(",")[-2:] for p in jobs] == [
        ["trainer.early_stop.monitor=val-loss", "trainer.epochs=1"],
        ["trainer.early_stop.monitor=val-acc", "trainer.epochs=1"]]
    assert all((p / "summary.json").is_file() for p in jobs)
