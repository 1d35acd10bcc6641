"""logger=tensorboard: a run's per-epoch scalars and, at its end, its hyperparameters with
final metrics, as TensorBoard event files in RUN/tb/.

Each run of a sweep writes its own tb/, so `tensorboard --logdir outputs/sweeps/FOLDER`
shows every job as a run and compares them in the HParams tab. tensorboard is an
optional extra: `check_available` turns its absence into one line before any training.
trackers.py opens it for a run with logger=tensorboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mnistcnn.base.config import to_plain
from mnistcnn.base.config_keys import settings
from mnistcnn.base.errors import UserError
from mnistcnn.base.run_folder import RunFolder

# summary.json keys shown as the HParams tab's metrics, when the run has them.
FINAL_METRICS = ("test/acc", "test/loss", "final/train/acc", "final/train/loss", "final/val/acc",
                 "final/val/loss", "epochs", "best_epoch", "train_time_s")


def check_available() -> None:
    """logger=tensorboard without the tensorboard package: a UserError saying how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise UserError("logger=tensorboard needs the tensorboard package: pip install "
                        "tensorboard (or `make install`, which includes it), or use "
                        "logger=none") from e


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings, as {"optim.lr": 0.001, ...}; lists and dicts become strings
    (HParams takes numbers, strings and booleans only)."""
    return {k: str(v) if isinstance(v, list | dict) else v
            for k, v in settings(to_plain(cfg)).items()}


class TensorBoardLog:
    def __init__(self, run_dir: Path, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run hides the epochs logged after its last checkpoint, which
        # it trains again, so each epoch appears once.
        self.writer = SummaryWriter(log_dir=str(RunFolder(run_dir).tensorboard),
                                    purge_step=first_epoch if first_epoch > 1 else None)

    def epoch(self, record: dict) -> None:
        """The metrics.jsonl record's numbers, at step = epoch; flushed so a crash keeps them."""
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def finish(self, cfg: DictConfig, summary: dict) -> None:
        """Hyperparameters with the final metrics, into the same tb/ folder (run_name=".")
        so the HParams tab lists the run under its own name."""
        metrics = {k: summary[k] for k in FINAL_METRICS if summary.get(k) is not None}
        monitor = summary.get("monitor")
        if monitor and f"best/{monitor}" in summary:
            metrics[f"best/{monitor}"] = summary[f"best/{monitor}"]
        self.writer.add_hparams(hparams(cfg), metrics, run_name=".")
        self.writer.close()
