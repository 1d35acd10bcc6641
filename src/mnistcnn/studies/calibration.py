"""How long a run of an arm will take on this device when no run of it has finished yet:
`studies --dry-run` trains the arm briefly in a scratch folder and scales what it measured
to the arm's full protocol.

A run's time is a part that grows with its epochs (its training images, and the validation
images evaluated after each epoch) and a part that does not (reading the data, building
the model, the test set, the files). A calibration is one real run (runs/lifecycle) of the
arm's own config cut to CALIBRATION_EPOCHS epochs of CALIBRATION_IMAGES training images and
no validation split (what watched it watches train/loss instead), so that an epoch is
training alone. From its summary.json and metrics.jsonl:

    fixed     = its wall time - train_time_s    (data, model, the full test set, the files)
    eval/img  = (fixed - data_load_s) / test images    (a little high: the model and the
                files count in)
    train/img = the fastest epoch but the first / training images
    per epoch = (train_time_s - the epochs' own times) / epochs    (last.pt, saved after
                every epoch, and the epoch's records)

and a full run of the arm is fixed + epochs x (per epoch + training images x train/img +
validation images x eval/img), its sizes from the arm's composed config (data.split on the
data set).
The first epoch is not timed: it pays the process's and the model's one-time warm-up
(thread pools, kernels), several seconds on a CPU, which a study's later runs do not pay.
Of the others the fastest is: on a machine that other work keeps busy now and then, an
epoch this short is either undisturbed or slowed several times over (torch's threads wait
for cores), and the undisturbed one is what a run costs. Seeds do not change what a run
costs, and neither do the arm's epochs or data.limit, which the calibration replaces: arms
whose calibration configs are equal are timed once.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from mnistcnn.base import run_folder
from mnistcnn.base.config import compose_config
from mnistcnn.base.run_folder import RunFolder
from mnistcnn.data import dataset

CALIBRATION_IMAGES = 512  # training images per calibration epoch
CALIBRATION_EPOCHS = 3  # the first warms up; the fastest of the others is timed


@dataclass(frozen=True)
class Sizes:
    train: int
    val: int
    test: int
    epochs: int


@dataclass(frozen=True)
class Rates:
    """What one calibration measured."""

    train_s: float  # per training image
    eval_s: float  # per evaluated image (validation or test)
    epoch_s: float  # per epoch, besides its images (the resume checkpoint)
    fixed_s: float  # a run's time outside its epochs
    device: str

    def run_seconds(self, sizes: Sizes) -> float:
        """A full run of these sizes (its test set is the calibration's: the split and the
        data set are the arm's own)."""
        return self.fixed_s + sizes.epochs * (self.epoch_s + sizes.train * self.train_s
                                              + sizes.val * self.eval_s)


def rates_of(run_dir: Path, wall_s: float, sizes: Sizes) -> Rates:
    """The rates of a finished calibration run in run_dir (wall_s: its whole time)."""
    folder = RunFolder(run_dir)
    summary = run_folder.read_json(folder.summary)
    epochs = run_folder.read_jsonl(folder.metrics)
    fixed = max(wall_s - summary["train_time_s"], 0.0)
    eval_s = max(fixed - summary.get("data_load_s", 0.0), 0.0) / max(sizes.test, 1)
    timed = min(e["epoch_time_s"] for e in epochs[1:] or epochs) - sizes.val * eval_s
    between = summary["train_time_s"] - sum(e["epoch_time_s"] for e in epochs)
    return Rates(max(timed, 0.0) / max(sizes.train, 1), eval_s,
                 max(between, 0.0) / max(len(epochs), 1), fixed, summary["device"])


def replacing(overrides: Sequence[str], settings: Sequence[str]) -> list[str]:
    """overrides without those of the keys settings sets, then settings."""
    parser = OverridesParser.create()
    keys = {o.key_or_group for o in parser.parse_overrides(list(settings))}
    kept = [o.input_line for o in parser.parse_overrides(list(overrides))
            if o.key_or_group not in keys]
    return [*kept, *settings]


def calibration_overrides(job: Sequence[str]) -> list[str]:
    """The job cut to a calibration: no validation split (keep=best and sched=plateau watch
    train/loss instead), no early stop (every epoch must happen), no trackers (no run of
    theirs to keep), seed 0 (seeds cost the same: one calibration for all of them)."""
    return replacing(job, [f"data.limit={CALIBRATION_IMAGES}", "data.val_size=0",
                           f"trainer.epochs={CALIBRATION_EPOCHS}",
                           "trainer.early_stop.monitor=train/loss",
                           "trainer.early_stop.patience=0", "trainer.early_stop.target=null",
                           "report.enabled=false", "logger=none", "resume=false", "seed=0"])


@contextmanager
def quiet() -> Iterator[None]:
    """The runs' log lines (epochs, per-class findings) stay out of a dry run's output."""
    logger = logging.getLogger("mnistcnn")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class Calibrator:
    """Times arms on this device, each distinct calibration config once."""

    def __init__(self) -> None:
        self.rates: dict[str, Rates] = {}
        self.datasets: dict[Path, dict] = {}
        self.spent_s = 0.0

    def sizes(self, cfg: DictConfig) -> Sizes:
        """The images a run of cfg trains on, validates on each epoch and tests on."""
        folder = dataset.locate(cfg.data)
        if folder not in self.datasets:
            self.datasets[folder] = dataset.read_dataset(folder)
        train, val, test = dataset.split(self.datasets[folder], cfg.data, cfg.seed)
        return Sizes(len(train[1]), len(val[1]) if val else 0, len(test[1]),
                     cfg.trainer.epochs)

    def calibrate(self, overrides: list[str]) -> Rates:
        """The rates of the calibration config of these overrides (measured once)."""
        cfg = compose_config(overrides)
        key = OmegaConf.to_yaml({k: v for k, v in cfg.items() if k not in ("study", "reuse")})
        if key not in self.rates:
            # Imported here: planning without calibrating needs none of it. A calibration
            # trains (never reuses a run: its time is the point).
            from mnistcnn.runs.lifecycle import run_training

            sizes = self.sizes(cfg)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="mnistcnn-calibration-") as scratch, quiet():
                run_training(cfg, RunFolder(Path(scratch)))
                wall = time.perf_counter() - t0
                self.rates[key] = rates_of(Path(scratch), wall, sizes)
            self.spent_s += time.perf_counter() - t0
        return self.rates[key]

    def run_seconds(self, job: list[str]) -> float:
        """How long a full run of this job takes, as a calibration of its arm says; a
        UserError when the job cannot run (its data, its config)."""
        rates = self.calibrate(calibration_overrides(job))
        return rates.run_seconds(self.sizes(compose_config(job)))

    @property
    def how(self) -> str:
        devices = sorted({r.device for r in self.rates.values()})
        epochs = f"{CALIBRATION_EPOCHS} epoch{'s' * (CALIBRATION_EPOCHS > 1)}"
        return (f"{epochs} of {CALIBRATION_IMAGES} images per arm on "
                f"{', '.join(devices) or 'this device'}")

