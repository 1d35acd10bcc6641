"""Reuse of identical runs: before a job trains, a completed run that trained exactly what
it would (the same settings, config_keys.settings: model, data, split, optimizer, schedule,
loss, trainer, seed; on the same device, with the same torch threads on the CPU; by the
same code, provenance.differences) is looked
for in the folders of `reuse.dirs`, at any depth. A match is copied into the job's folder
instead of trained, and its summary.json says where it came from ("reused_from").

A copy is never a source (its original is where the numbers were made), and neither are a
run's resume state, its job log or its trackers' records: the copy is not a training.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig

from mnistcnn.base import provenance, run_folder
from mnistcnn.base.config import to_plain
from mnistcnn.base.config_keys import settings
from mnistcnn.base.errors import UserError
from mnistcnn.base.formats import pct
from mnistcnn.base.run_folder import (
    CONFIG,
    LAST,
    MLFLOW_RUN,
    SUMMARY,
    TENSORBOARD,
    TRAIN_LOG,
    RunFolder,
)

log = logging.getLogger(__name__)

REUSED_FROM = "reused_from"  # summary.json: the folder a reused run's files came from
OTHER_CODE = "reused_from_other_code"  # summary.json: how that run's code differs, if it does
# What a copy leaves behind: Hydra's record and log of the job (the copy has its own), the
# resume state and the trackers' records of the original's training.
NOT_COPIED = (CONFIG.split("/")[0], TRAIN_LOG, LAST, SUMMARY, TENSORBOARD, MLFLOW_RUN)


@dataclass
class Found:
    path: Path
    summary: dict
    differences: list[str]  # how the code that made it differs from this code; [] = same


def thread_difference(summary: dict, device: str, threads: int) -> list[str]:
    """On the CPU the torch thread count changes the numbers (sums split differently): a run
    made with another count, or none recorded, differs as other code does."""
    made = summary.get("cpu_threads")
    if device != "cpu" or made == threads:
        return []
    return [f"torch threads {made if made is not None else 'not recorded'} -> {threads}"]


def identity(config: dict, device: str) -> dict:
    """What decides a run's numbers apart from the code: its settings and its device."""
    return {**settings(config), "device": device}


def read_config(path: Path) -> dict | None:
    """A run folder's saved config as plain data; None when it cannot be read."""
    try:
        loaded = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def completed_runs(dirs: list[str], own: Path | None = None) -> Iterator[tuple[Path, dict]]:
    """(folder, summary) of every completed run under dirs that is not a copy, own aside."""
    own = own.resolve() if own is not None else None
    for top in dirs:
        for path in sorted(Path(top).rglob(SUMMARY)):
            folder = path.parent
            if folder.resolve() == own:
                continue
            try:
                summary = run_folder.read_json(path)
            except UserError:
                continue
            if summary.get("status") == "completed" and REUSED_FROM not in summary:
                yield folder, summary


def usable_runs(dirs: list[str], threads: int, any_version: bool,
                own: Path | None = None) -> Iterator[tuple[dict, Found]]:
    """(identity, the run) of every completed run under dirs that a job may reuse: made by
    this code (with these torch threads on the CPU), or by any with any_version."""
    now = provenance.record()
    for folder, summary in completed_runs(dirs, own):
        config = read_config(RunFolder(folder).config)
        if config is None:
            continue
        device = str(summary.get("device"))
        differences = provenance.differences(summary, now) + \
            thread_difference(summary, device, threads)
        if not differences or any_version:
            yield identity(config, device), Found(folder, summary, differences)


def find(cfg: DictConfig, device: str, threads: int, own: Path) -> Found | None:
    """The first completed run under cfg.reuse.dirs that trained what cfg would on device
    (with these torch threads on the CPU); one made by other code or another thread count
    only with cfg.reuse.any_version."""
    wanted = identity(to_plain(cfg), device)
    return next((found for ident, found in usable_runs(
        list(cfg.reuse.dirs), threads, cfg.reuse.any_version, own) if ident == wanted), None)


def shown_from(source: Path, job: Path) -> str:
    """Where a reused run came from: relative to the folder that holds the job's sweep (a
    book's folder, for a book's runs) when it lies there, else as seen from where the
    command ran."""
    holder = job.resolve().parent.parent
    try:
        return str(source.resolve().relative_to(holder))
    except ValueError:
        return os.path.relpath(source)


def take(found: Found, folder: RunFolder) -> dict:
    """Copy the found run's files into folder and write its summary.json, which says where
    they came from; returns that summary."""
    for item in found.path.iterdir():
        if item.name in NOT_COPIED:
            continue
        if item.is_dir():
            shutil.copytree(item, folder.path / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, folder.path / item.name)
    summary = {**found.summary, REUSED_FROM: shown_from(found.path, folder.path)}
    if found.differences:
        summary[OTHER_CODE] = found.differences
    run_folder.write_json(folder.summary, summary)
    other = f"; made by other code: {', '.join(found.differences)}" if found.differences else ""
    log.info("reused %s (a completed run of the same settings%s): test/acc %s, not trained "
             "again -> %s", summary[REUSED_FROM], other, pct(summary["test/acc"]), folder.shown)
    return summary
