"""The run folder: the names of the files a run writes (the one place they are spelled),
`RunFolder` (a run's paths, its Hydra record, how it is shown) and the atomic writes.

Each writer fills a temporary file next to the target, flushes and fsyncs it,
then renames it over the target (rename is atomic on POSIX file systems): a crash never
leaves a truncated file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch
from omegaconf import DictConfig, OmegaConf

from mnistcnn.base.errors import UserError

# What Hydra writes in a job's folder (.hydra is its default hydra.output_subdir).
CONFIG = ".hydra/config.yaml"  # the resolved config: what makes a folder a run folder
HYDRA_RECORD = ".hydra/hydra.yaml"  # how the job was launched: mode, config group choices
OVERRIDES = ".hydra/overrides.yaml"  # the job's command-line overrides
TRAIN_LOG = "train.log"  # what the console showed (Hydra's job log, or a resume's)
# What a run writes.
SUMMARY = "summary.json"  # how the run went, rewritten as it starts and ends
METRICS = "metrics.jsonl"  # one record per epoch
LAST = "last.pt"  # the resume state, rewritten after every epoch; gone once completed
MODEL = "model.pt"  # the kept weights with their config
PREDICTIONS = "predictions.csv"
CONFUSION = "confusion.csv"
CLASSIFICATION = "classification.csv"  # the per-class report
REPORT = "report.html"
PLOTS = "plots"  # the report's figures, a folder
EVALUATION = "evaluation.json"  # what `evaluate` measured again
TENSORBOARD = "tb"  # logger=tensorboard's event files, a folder
MLFLOW_RUN = "mlflow.json"  # logger=mlflow's {"run_id": ...}, so a resume continues it


@dataclass
class RunFolder:
    path: Path

    @property
    def shown(self) -> str:
        """The folder as seen from where the command ran: no machine paths in what is
        printed or recorded."""
        return os.path.relpath(self.path)

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def hydra_record(self) -> Path:
        return self.path / HYDRA_RECORD

    @property
    def overrides(self) -> Path:
        return self.path / OVERRIDES

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def confusion(self) -> Path:
        return self.path / CONFUSION

    @property
    def classification(self) -> Path:
        return self.path / CLASSIFICATION

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    @property
    def evaluation(self) -> Path:
        return self.path / EVALUATION

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def mlflow_run(self) -> Path:
        return self.path / MLFLOW_RUN

    def read_hydra_record(self) -> DictConfig | None:
        """Hydra's record of how the run was launched (its `hydra` node: mode, config group
        choices), or None for a run without one."""
        path = self.hydra_record
        return OmegaConf.load(path).hydra if path.is_file() else None


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    # A pid-unique name beside the target (same file system, so rename is atomic);
    # open() rather than mkstemp() so the file gets the usual umask permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise


def write_error(path: Path, e: OSError) -> UserError:
    """A failed write (disk full, read-only folder) is the user's to fix, not a bug."""
    return UserError(f"cannot write {path}: {e.strerror or e}; free disk space or write "
                     f"somewhere else (e.g. hydra.run.dir=PATH); earlier files are intact")


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: str | Path, header: Sequence, rows: Iterable[Sequence]) -> None:
    """A CSV through the csv module: a field holding a comma or quote (a grouped class
    name such as `{0,6}`) is quoted, so every row keeps the header's field count."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def save_torch(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record and fsync: metrics.jsonl grows line by line as epochs end."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(Path(path), e) from e


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file, ignoring a last line cut short by a crash."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def utc_now() -> str:
    """The time stamps the files record (started, finished, evaluated): UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
