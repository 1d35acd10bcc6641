"""logger=mlflow: runs read back from a SQLite store in a temp folder with MLflow's own
client (params, metric history, status, tags, artifacts), the MLflow run of an interrupted
and resumed run, a sweep's jobs in one experiment, and the one-line error when the package
is missing."""

from __future__ import annotations

import json
import os

import pytest
from conftest import ROOT, run_main
from omegaconf import OmegaConf

from mnistcnn.base.config import compose_config
from mnistcnn.base.errors import Interrupted, UserError
from mnistcnn.base.run_folder import RunFolder
from mnistcnn.runs import job, lifecycle
from mnistcnn.tracking import mlflow_tracker

mlflow = pytest.importorskip("mlflow", reason="pip install -e '.[mlflow]'")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module: creating its tables takes seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    mlflow_tracker.prepare_store(uri)
    return uri


def config(synthetic_dir, store, *overrides):
    return compose_config([f"data.dir={synthetic_dir}", "data.val_size=200", "model=tiny",
                           "data.limit=400", "trainer.device=cpu", "report.enabled=false",
                           "logger=mlflow", f"logger.tracking_uri={store}", *overrides])


def the_run(store, run_dir):
    client = mlflow.MlflowClient(store)
    run_id = json.loads(RunFolder(run_dir).mlflow_run.read_text())["run_id"]
    return client, client.get_run(run_id)


def steps(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_a_run_is_an_mlflow_run_with_its_settings_curves_results_and_files(
        synthetic_dir, store, tmp_path):
    run_dir = tmp_path / "runs" / "first"
    run_dir.mkdir(parents=True)
    cfg = config(synthetic_dir, store, "trainer.epochs=2", "seed=3", "optim.lr=0.002",
                 "report.enabled=true", "report.plots=[loss]", "logger.log_model=true")
    summary = job.train_run(cfg, run_dir)

    client, found = the_run(store, run_dir)
    experiment = client.get_experiment(found.info.experiment_id)
    assert experiment.name == os.path.relpath(run_dir.parent)  # the folder of the runs
    assert found.info.status == "FINISHED" and found.info.run_name == "first"
    params = found.data.params
    assert params["optim.lr"] == "0.002" and params["model.name"] == "tiny"
    assert params["model.channels"] == "[16, 8, 4]" and params["seed"] == "3"
    assert not any(k.startswith(("data.dir", "trainer.device", "logger.")) for k in params)
    tags = found.data.tags
    assert tags["status"] == "completed" and tags["seed"] == "3"
    assert tags["code.git_commit"] == str(summary["git_commit"])
    assert "study" not in tags and "sweep" not in tags  # a single run of no preset
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr"):
        assert steps(client, found.info.run_id, key) == [(r["epoch"], r[key])
                                                         for r in records], key
    metrics = found.data.metrics
    assert metrics["test/acc"] == pytest.approx(summary["test/acc"])
    assert metrics["final/val/acc"] == pytest.approx(summary["final/val/acc"])
    assert metrics["params/total"] == summary["params"]["total"]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"summary.json", "report.html", "metrics.jsonl", "model.pt", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(found.info.run_id, "plots")] == \
        ["plots/loss.png"]


def test_an_interrupted_and_resumed_run_is_one_mlflow_run(synthetic_dir, store, tmp_path,
                                                          monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = config(synthetic_dir, store, "trainer.epochs=3")
    # A stop request as soon as epoch 1 is written: the run stops inside epoch 2.
    monkeypatch.setattr(lifecycle.StopOnSignal, "__call__", lambda self: bool(
        (run_dir / "metrics.jsonl").read_text()))
    with pytest.raises(Interrupted):
        job.train_run(cfg, run_dir)
    client, found = the_run(store, run_dir)
    assert found.info.status == "KILLED" and found.data.tags["status"] == "interrupted"
    assert [s for s, _ in steps(client, found.info.run_id, "train/loss")] == [1]

    monkeypatch.undo()
    job.resume_run(run_dir)
    client, resumed = the_run(store, run_dir)
    assert resumed.info.run_id == found.info.run_id
    assert resumed.info.status == "FINISHED" and resumed.data.tags["status"] == "completed"
    assert [s for s, _ in steps(client, found.info.run_id, "train/loss")] == [1, 2, 3]
    assert len(client.search_runs([found.info.experiment_id],
                                  f"tags.run_dir = '{found.data.tags['run_dir']}'")) == 1


def test_a_resumed_run_logs_the_epochs_the_store_missed(synthetic_dir, store, tmp_path,
                                                        monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = config(synthetic_dir, store, "trainer.epochs=3")
    # The store fails for epoch 2 (a warning, the run goes on), then the run is stopped.
    real = mlflow_tracker.MLflowLog.log_epochs

    def flaky(self, records):
        if records[-1]["epoch"] == 2:
            raise OSError("store unreachable")
        real(self, records)

    monkeypatch.setattr(mlflow_tracker.MLflowLog, "log_epochs", flaky)
    monkeypatch.setattr(lifecycle.StopOnSignal, "__call__", lambda self: len(
        (run_dir / "metrics.jsonl").read_text().splitlines()) >= 2)
    with pytest.raises(Interrupted):
        job.train_run(cfg, run_dir)
    client, found = the_run(store, run_dir)
    assert [s for s, _ in steps(client, found.info.run_id, "val/acc")] == [1]

    monkeypatch.undo()
    job.resume_run(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps(client, found.info.run_id, "val/acc") == [(r["epoch"], r["val/acc"])
                                                           for r in records]


def test_a_diverged_run_ends_its_mlflow_run_failed(synthetic_dir, store, tmp_path):
    cfg = config(synthetic_dir, store, "optim=sgd", "optim.lr=1e12")
    with pytest.raises(UserError, match="diverged"):
        job.train_run(cfg, tmp_path)
    client, found = the_run(store, tmp_path)
    assert found.info.status == "FAILED" and found.data.tags["status"] == "diverged"
    # Where it stopped stays in summary.json: the lr curve gains no point from it.
    assert steps(client, found.info.run_id, "lr") == []
    assert "summary.json" in {a.path for a in client.list_artifacts(found.info.run_id)}


def test_a_sweep_job_is_tagged_with_its_study_and_sweep_and_named_after_its_folder(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "outputs" / "studies" / "book" / "pooling" / "1_model.pool=avg"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"mode": "MULTIRUN", "runtime": {"choices": {
        "experiment": "pooling", "quick": "on", "model": "classic"}}}},
        job / ".hydra" / "hydra.yaml")
    cfg = compose_config(["model=classic", "logger=mlflow", "seed=2"])
    assert mlflow_tracker.experiment_name(cfg, job) == "outputs/studies/book/pooling"
    tags = mlflow_tracker.tags(cfg, job)
    assert tags["study"] == "pooling" and tags["sweep"] == "outputs/studies/book/pooling"
    assert tags["run_dir"] == "outputs/studies/book/pooling/1_model.pool=avg"
    params = mlflow_tracker.params(cfg, job)
    assert params["experiment"] == "pooling" and params["quick"] == "on"
    named = compose_config(["logger=mlflow", "logger.experiment=mine"])
    assert mlflow_tracker.experiment_name(named, job) == "mine"


def test_a_sweep_with_a_store_path_writes_flat_job_folders_and_one_experiment(synthetic_dir,
                                                                              tmp_path):
    # The form docs/tracking.md teaches: a path in an override names no folder.
    uri = f"sqlite:///{tmp_path / 'store' / 'm.db'}"
    sweep_dir = tmp_path / "sweep"
    result = run_main("train", "-m", "model=tiny", f"data.dir={synthetic_dir}",
                      "data.val_size=200", "data.limit=400", "trainer.epochs=1",
                      "trainer.device=cpu", "report.enabled=false", "seed=0,1", "logger=mlflow",
                      f"logger.tracking_uri={uri}", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr
    jobs = [f"{n}_data.limit=400,data.val_size=200,model=tiny,seed={n},trainer.epochs=1"
            for n in (0, 1)]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == jobs
    assert all((sweep_dir / job / "summary.json").is_file() for job in jobs)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.run_name for r in runs) == jobs
    assert {client.get_experiment(r.info.experiment_id).name for r in runs} == {
        os.path.relpath(sweep_dir, ROOT)}  # the sweep's folder, as seen from where it ran
