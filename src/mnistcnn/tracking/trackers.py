"""The tracker cfg.logger names (none, tensorboard, mlflow) behind one interface for a run:
`check_available` before any run folder exists, then `open_trackers` as the run starts,
`start_training`, an `epoch` call per metrics.jsonl record, and `finish` (completed) or
`close` (failed, diverged, interrupted) as the run ends.

Each opens when it has what it needs: MLflow's run with the run, before its data is read, so
a run that fails to start is a failed MLflow run; TensorBoard's event file when training
starts, at the epoch it starts from (purge_step: a resumed run's epochs are logged once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from mnistcnn.tracking import mlflow_tracker, tensorboard_tracker
from mnistcnn.tracking.mlflow_tracker import MLflowLog
from mnistcnn.tracking.tensorboard_tracker import TensorBoardLog


def chosen(cfg: DictConfig) -> str:
    """logger.name; a config saved before there were loggers has none."""
    return (cfg.get("logger") or {}).get("name", "none")


def check_available(cfg: DictConfig) -> None:
    """A UserError, one line with the fix, when the chosen tracker's package is missing or
    its store cannot be opened."""
    if chosen(cfg) == "tensorboard":
        tensorboard_tracker.check_available()
    elif chosen(cfg) == "mlflow":
        mlflow_tracker.check_available(cfg.logger.tracking_uri)


@dataclass
class Trackers:
    """The open tracker of one run; with logger=none every call does nothing."""

    cfg: DictConfig
    run_dir: Path
    mlflow: MLflowLog | None
    tensorboard: TensorBoardLog | None = None

    def start_training(self, first_epoch: int) -> None:
        if chosen(self.cfg) == "tensorboard":
            self.tensorboard = TensorBoardLog(self.run_dir, first_epoch)

    def epoch(self, record: dict) -> None:
        """A metrics.jsonl record, as it is appended."""
        for tracker in (self.tensorboard, self.mlflow):
            if tracker is not None:
                tracker.epoch(record)

    def finish(self, summary: dict) -> None:
        """The run completed: TensorBoard's hyperparameters with the final metrics, then the
        end of the MLflow run."""
        if self.tensorboard is not None:
            self.tensorboard.finish(self.cfg, summary)
        self.close(summary)

    def close(self, summary: dict) -> None:
        """The run ended as summary's status says: the MLflow run ends with that status. A
        run that did not complete keeps its TensorBoard curves, without hyperparameters."""
        if self.mlflow is not None:
            self.mlflow.finish(summary)


def open_trackers(cfg: DictConfig, run_dir: Path) -> Trackers:
    """The run's tracker, with MLflow's run (a new one, or a resumed run's own) opened."""
    return Trackers(cfg, run_dir, MLflowLog(cfg, run_dir) if chosen(cfg) == "mlflow" else None)
