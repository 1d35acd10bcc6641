"""logger=mlflow: each run an MLflow run in a tracking store (by default the SQLite file
outputs/mlflow.db), so runs from every sweep, study and day sit in one database.

The run's params are the settings a comparison tells runs apart by; every epoch's
metrics.jsonl numbers are metrics at step = epoch, the summary's numbers at the end; tags
carry the status, seed, study, sweep and the code version; the run folder's small files
are artifacts. A sweep (or a study) is one MLflow experiment named after its folder, so
`mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db` shows its runs side by side.
The MLflow run id is kept in RUN/mlflow.json, so `resume` continues the same MLflow run.

The run folder stays the record: a store that fails mid-run costs a warning, never the
training. mlflow is an optional extra: `check_available` turns its absence into one line
before any run folder is made. trackers.py opens it for a run with logger=mlflow.
"""

from __future__ import annotations

import logging
import os
import time
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mnistcnn.base import provenance, run_folder
from mnistcnn.base.config import to_plain
from mnistcnn.base.config_keys import preset_choices, settings
from mnistcnn.base.errors import UserError
from mnistcnn.base.run_folder import CONFIG, METRICS, PLOTS, REPORT, SUMMARY, RunFolder

log = logging.getLogger(__name__)

# summary.json status -> MLflow run status
STATUS = {"completed": "FINISHED", "failed": "FAILED", "diverged": "FAILED",
          "interrupted": "KILLED"}
# The run folder's files uploaded as artifacts when they exist (model.pt on request).
ARTIFACTS = (SUMMARY, REPORT, METRICS, CONFIG)
SQLITE = "sqlite:///"
# summary.json numbers that are no final metric: the seed is a param, and a diverged run's
# epoch, batch and lr say where it stopped (lr is a per-epoch curve already).
NOT_FINAL = ("seed", "epoch", "batch", "lr")


def check_available(tracking_uri: str) -> None:
    """logger=mlflow without the mlflow package: a UserError saying how to get it. With
    it, a SQLite store is created here, once, so the parallel jobs of a sweep never race
    to create its tables."""
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        raise UserError("logger=mlflow needs the mlflow package: pip install "
                        "'mnistcnn[mlflow]' (or `make install`, which includes it), or use "
                        "logger=none") from e
    prepare_store(tracking_uri)


@cache
def prepare_store(uri: str) -> None:
    """Make a SQLite store's folder and tables; a server's store is the server's business,
    but its URI must be one MLflow can open a client for."""
    if not uri.startswith(SQLITE):
        check_uri(uri)
        return
    Path(uri[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
    # MLflow says at INFO level that it creates and migrates tables: noise in train.log.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow.exceptions import MlflowException

    try:
        client(uri).search_experiments(max_results=1)
    except MlflowException as e:
        raise UserError(f"logger.tracking_uri={uri} cannot be opened ({e.message}); point "
                        f"it at a writable file, e.g. {SQLITE}outputs/mlflow.db") from e


def check_uri(uri: str) -> None:
    """A UserError naming logger.tracking_uri when MLflow cannot make a client for it (an
    unknown scheme, the retired file store, a database driver that is not installed)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    fix = f"use a SQLite file (e.g. {SQLITE}outputs/mlflow.db) or a tracking server " \
          f"(http://HOST:PORT)"
    try:
        client(uri)
    except UnsupportedModelRegistryStoreURIException:
        scheme = uri.split("://", 1)[0] if "://" in uri else uri.split(":", 1)[0]
        raise UserError(f"logger.tracking_uri={uri}: MLflow knows no store for the scheme "
                        f"'{scheme}'; {fix}") from None
    except MlflowException as e:
        first = " ".join(e.message.split(". ")[0].split())
        if "MLFLOW_ALLOW_FILE_STORE" in e.message:  # a folder: MLflow 3 retired that store
            fix += ", or set MLFLOW_ALLOW_FILE_STORE=true to keep a folder"
        raise UserError(f"logger.tracking_uri={uri} cannot be used ({first}); {fix}") from None
    except ImportError as e:
        raise UserError(f"logger.tracking_uri={uri} needs the Python package {e.name}, which "
                        f"is not installed; install it, or {fix}") from None


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str) -> str | None:
    """Beside a SQLite file (outputs/mlartifacts/), not in ./mlruns of whatever folder the
    command ran in; a server decides for itself."""
    if not uri.startswith(SQLITE):
        return None
    return (Path(uri[len(SQLITE):]).parent / "mlartifacts").resolve().as_uri()


def relative(path: Path) -> str:
    """A path as the user would type it from where the command runs."""
    return os.path.relpath(path.resolve(), Path.cwd())


def experiment_name(cfg: DictConfig, run_dir: Path) -> str:
    """logger.experiment, else the folder holding the run: a sweep's (or study's) folder
    for its jobs, outputs/runs for single runs."""
    if cfg.logger.experiment:
        return cfg.logger.experiment
    folder = relative(run_dir.parent)
    return folder if folder != "." else run_dir.resolve().parent.name


def params(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    """What a comparison tells runs apart by: the preset choices and the settings."""
    plain = to_plain(cfg)
    return {k: str(v) for k, v in {**preset_choices(run_dir, plain), **settings(plain)}.items()}


def tags(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    hydra = RunFolder(run_dir).read_hydra_record()
    out = {"status": "running", "seed": str(cfg.seed), "run_dir": relative(run_dir),
           **{f"code.{k}": str(v) for k, v in provenance.record().items()}}
    if provenance.record()["git_commit"]:
        out["mlflow.source.git.commit"] = provenance.record()["git_commit"]
    if hydra is not None:
        study = hydra.runtime.get("choices", {}).get("experiment")
        if study:
            out["study"] = study
        if str(hydra.get("mode")) == "MULTIRUN":
            out["sweep"] = relative(run_dir.parent)
    return out


def numbers(record: dict) -> dict[str, float]:
    """The numeric entries of a record, dicts one level down as "params/total"."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in numbers(value).items()})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class MLflowLog:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException

        self.Metric, self.Param, self.RunTag = Metric, Param, RunTag
        self.errors = (MlflowException, OSError)
        self.cfg, self.run_dir = cfg, run_dir
        self.client = client(cfg.logger.tracking_uri)
        self.folder = RunFolder(run_dir)
        self.run_id = self.continued_run() if cfg.get("resume") else None
        if self.run_id is None:
            self.run_id = self.new_run()
            run_folder.write_json(self.folder.mlflow_run, {"run_id": self.run_id})
        # The last epoch the store has: a resumed run logs from the one after.
        history = self.client.get_metric_history(self.run_id, "train/loss")
        self.logged = max((m.step for m in history), default=0)

    def continued_run(self) -> str | None:
        """The MLflow run of an earlier attempt of this run folder, set running again."""
        path = self.folder.mlflow_run
        if not path.is_file():
            return None
        run_id = run_folder.read_json(path)["run_id"]
        try:
            self.client.update_run(run_id, status="RUNNING")
        except self.errors:
            log.warning("MLflow run %s of %s is not in %s; logging a new one", run_id,
                        self.run_dir, self.cfg.logger.tracking_uri)
            return None
        self.client.set_tag(run_id, "status", "running")
        return run_id

    def new_run(self) -> str:
        experiment_id = self.experiment_id(experiment_name(self.cfg, self.run_dir))
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags=tags(self.cfg, self.run_dir))
        items = [self.Param(k, v) for k, v in params(self.cfg, self.run_dir).items()]
        for start in range(0, len(items), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(run.info.run_id, params=items[start:start + 100])
        return run.info.run_id

    def experiment_id(self, name: str) -> str:
        """The experiment called name, made if missing (by whichever parallel job is first)."""
        from mlflow.exceptions import MlflowException

        for _ in range(2):
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            try:
                return self.client.create_experiment(
                    name, artifact_location=artifact_location(self.cfg.logger.tracking_uri))
            except MlflowException:  # another job made it in between: read it again
                continue
        raise UserError(f"MLflow experiment {name} cannot be created in "
                        f"{self.cfg.logger.tracking_uri}")

    def epoch(self, record: dict) -> None:
        """The metrics.jsonl record's numbers at step = epoch. After a resume, epochs the
        store misses (trained before the stop, logged by no one) come first from the file."""
        records = [record]
        if record["epoch"] > self.logged + 1:
            records = [r for r in run_folder.read_jsonl(self.folder.metrics)
                       if self.logged < r["epoch"] <= record["epoch"]]
        self.guarded(f"epoch {record['epoch']}", self.log_epochs, records)

    def log_epochs(self, records: list[dict]) -> None:
        now = int(time.time() * 1000)
        metrics = [self.Metric(k, v, now, r["epoch"]) for r in records
                   for k, v in numbers(r).items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.logged = max(r["epoch"] for r in records)

    def finish(self, summary: dict) -> None:
        """End the MLflow run as the run ended (summary's status): its final numbers,
        tags and small files, then the matching MLflow status."""
        self.guarded("the end of the run", self.end, summary)

    def end(self, summary: dict) -> None:
        missing = [r for r in run_folder.read_jsonl(self.folder.metrics)
                   if r["epoch"] > self.logged] \
            if self.folder.metrics.is_file() else []
        if missing:
            self.log_epochs(missing)
        step = summary.get("epochs") or self.logged
        now = int(time.time() * 1000)
        finals = [self.Metric(k, v, now, step) for k, v in numbers(summary).items()
                  if k not in NOT_FINAL]
        status = summary.get("status", "failed")
        self.client.log_batch(self.run_id, metrics=finals,
                              tags=[self.RunTag("status", status)])
        self.upload()
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FAILED"))

    def upload(self) -> None:
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        if self.folder.plots.is_dir():
            self.client.log_artifacts(self.run_id, str(self.folder.plots), PLOTS)
        if self.cfg.logger.log_model and self.folder.model.is_file():
            self.client.log_artifact(self.run_id, str(self.folder.model))

    def guarded(self, what: str, action, *args: Any) -> None:
        """The run folder is the record: a store that fails is a warning, not a lost run."""
        try:
            action(*args)
        except self.errors as e:
            log.warning("MLflow could not log %s of %s: %s", what, self.run_dir, e)
