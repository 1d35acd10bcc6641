"""Early stopping and best weights: the monitored value, epoch by epoch.

engine.Training builds one per run, from cfg.trainer, and `fit` hands every epoch's record
to `EarlyStopping.update`, which keeps the best value of the monitored metric
(`trainer.early_stop.monitor`), the epoch it came from and, with `trainer.keep=best`, a copy
of that epoch's weights (which `fit` leaves in the model at the end); it says when to stop
(no improvement for `patience` epochs, or `target` reached). Its state is tensors and
primitives, so it rides in last.pt and a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mnistcnn.base.config import choice
from mnistcnn.training.device import cpu_copy


def maximised(monitor: str) -> bool:
    """Accuracies improve upwards, losses downwards."""
    return monitor.endswith("/acc")


class EarlyStopping:
    def __init__(self, monitor: str = "val/acc", patience: int = 0, min_delta: float = 0.0,
                 target: float | None = None, keep_best: bool = False):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.target, self.keep_best = target, keep_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0  # epochs since the last improvement
        self.elapsed_s = 0.0  # summed epoch times: training time so far, across resumes
        self.target_epoch: int | None = None
        self.target_s: float | None = None
        self.stop_reason: str | None = None  # "patience" or "target" once it says stop

    @classmethod
    def from_config(cls, trainer: Any) -> EarlyStopping:
        es = trainer.early_stop
        return cls(es.monitor, es.patience, es.min_delta, es.target,
                   keep_best=choice(trainer.keep) == "best")

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def score(self, record: dict) -> float:
        """The monitored value signed so that lower is better (what ReduceLROnPlateau
        minimises)."""
        value = record[self.monitor]
        return -value if maximised(self.monitor) else value

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if maximised(self.monitor):
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def reaches_target(self, value: float) -> bool:
        if self.target is None:
            return False
        return value >= self.target if maximised(self.monitor) else value <= self.target

    def update(self, record: dict, model: nn.Module) -> None:
        """Take one epoch's record (and the weights it ended with); `stopped` then says
        whether training stops. A record without the monitored value (no val split) changes
        nothing but the elapsed time."""
        self.elapsed_s += record["epoch_time_s"]
        value = record.get(self.monitor)
        if value is None:
            return
        if self.improves(value):
            self.best, self.best_epoch, self.bad_epochs = value, record["epoch"], 0
            if self.keep_best:
                self.best_weights = cpu_copy(model.state_dict())
        else:
            self.bad_epochs += 1
        if self.target_epoch is None and self.reaches_target(value):
            self.target_epoch, self.target_s = record["epoch"], self.elapsed_s
            self.stop_reason = "target"
        elif self.patience and self.bad_epochs >= self.patience:
            self.stop_reason = "patience"

    def describe(self) -> str:
        """The log line of a stop."""
        if self.stop_reason == "target":
            return (f"stopping: {self.monitor} reached the target {self.target:g} at epoch "
                    f"{self.target_epoch} ({self.target_s:.1f}s of training)")
        return (f"stopping: {self.monitor} has not improved by more than {self.min_delta:g} "
                f"for {self.bad_epochs} epochs (best {self.best:.4f} at epoch "
                f"{self.best_epoch})")

    def summary(self, epochs_asked: int, epochs_run: int) -> dict:
        """The keys summary.json gains: whether and why the run stopped early, the best
        epoch and its monitored value, and when a target was reached."""
        out: dict[str, Any] = {"stopped_early": self.stopped and epochs_run < epochs_asked,
                               "stop_reason": self.stop_reason}
        if self.best is not None:
            out.update({"monitor": self.monitor, f"best/{self.monitor}": self.best,
                        "best_epoch": self.best_epoch})
        if self.target is not None:
            out.update({"target": self.target, "target_reached_epoch": self.target_epoch,
                        "target_reached_s": None if self.target_s is None
                        else round(self.target_s, 3)})
        return out

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch,
                "best_weights": self.best_weights, "bad_epochs": self.bad_epochs,
                "elapsed_s": self.elapsed_s, "target_epoch": self.target_epoch,
                "target_s": self.target_s, "stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
