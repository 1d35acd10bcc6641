"""Atomic writes for the run folder: a crash never leaves a truncated file behind.

Each writer fills a temporary file next to the target, flushes and fsyncs it,
then renames it over the target (rename is atomic on POSIX file systems).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch

from mnistcnn.base.errors import UserError


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
