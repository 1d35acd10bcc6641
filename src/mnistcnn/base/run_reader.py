"""Finished run folders read back: each run's flattened config, summary and per-epoch
records, for the comparison, the studies' answers, the book and its publish.

A run folder is self-describing (the resolved config in .hydra/config.yaml, summary.json,
metrics.jsonl), so this needs nothing outside it. A folder whose job never wrote its
summary (killed, or stopped before training) is read as a run with status `missing`,
so that it is counted, never skipped in silence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from mnistcnn.base import run_folder
from mnistcnn.base.config_keys import flatten, preset_choices
from mnistcnn.base.errors import UserError
from mnistcnn.base.run_folder import CONFIG, SUMMARY, RunFolder


@dataclass
class Run:
    path: Path
    config: dict  # flattened resolved config: {"model.batchnorm": True, ...}
    summary: dict
    metrics: list[dict]

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")

    @property
    def seed(self):
        return self.config.get("seed")


def wall_seconds(summary: dict) -> float | None:
    """A run's wall time from its summary.json (started to finished); None when either is
    missing or unreadable (a run that never ended)."""
    try:
        return (datetime.fromisoformat(summary["finished"])
                - datetime.fromisoformat(summary["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (those with .hydra/config.yaml) at or below each path, in job order."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path} does not exist; pass run or sweep folders written by "
                            f"`train` (outputs/runs/..., outputs/sweeps/...)")
        runs = [path] if RunFolder(path).config.is_file() else sorted(
            (c.parent.parent for c in path.rglob(CONFIG) if c.parent.parent != path),
            key=_job_order)
        if not runs:
            raise UserError(f"{path} holds no run folders (folders with {CONFIG}); "
                            f"pass run or sweep folders written by `train`")
        found += [r for r in runs if r not in found]
    return found


def _job_order(path: Path) -> tuple:
    """Hydra names job folders NUM_overrides: sort 2_ before 10_."""
    m = re.match(r"(\d+)_", path.name)
    return (str(path.parent), int(m.group(1)) if m else -1, path.name)


def load_run(path: Path) -> Run:
    folder = RunFolder(path)
    config = OmegaConf.to_container(OmegaConf.load(folder.config), resolve=True)
    summary = run_folder.read_json(folder.summary) if folder.summary.is_file() else {
        "status": "missing",
        "error": f"no {SUMMARY}: the job was killed or never reached training"}
    metrics = run_folder.read_jsonl(folder.metrics) if folder.metrics.is_file() else []
    return Run(path, {**preset_choices(path, config), **flatten(config)}, summary, metrics)


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    return [load_run(p) for p in find_runs(paths)]
