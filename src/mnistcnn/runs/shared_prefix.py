"""Runs of one sweep that differ only in trainer.epochs share their first epochs: the same
seed, data order, augmentation and optimizer steps, as long as nothing depends on the total
(a cosine or one-cycle schedule spreads itself over it). With reuse.shared_epochs listing
the sweep's levels, the first job of such a group to run trains once, to the longest, in a
folder of the sweep's own (SHARED/ID, where its last.pt lives), and writes every arm as its
last epoch ends: the weights it keeps (trainer.keep=best: the best of its own epochs), early
stopping as it would have stopped alone, the test set, model.pt, the report. Its own arm goes
straight into its job folder; the others wait in SHARED/ID/epochs=N/ until their jobs run
and take them (SHARED goes once none waits). Each arm's summary.json says so ("taken_from":
trainer.epochs=LONGEST); everything else in it, and every other file, is what training the
arm alone writes, apart from times.

Jobs of one group that run at once (a parallel launcher) take turns at its folder: one
trains, the others wait and then take their arms. Killed and resumed (`resume=true`), the
group's training continues from its last.pt: arms written before stay as they are, and the
rest are written as their epochs end.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig

from mnistcnn.base import provenance, run_folder
from mnistcnn.base.config import choice, to_plain
from mnistcnn.base.config_keys import settings
from mnistcnn.base.errors import Diverged, UserError
from mnistcnn.base.formats import pct
from mnistcnn.base.run_folder import RunFolder
from mnistcnn.runs import lifecycle
from mnistcnn.tracking.trackers import open_trackers
from mnistcnn.training.engine import EpochEnd, Training

log = logging.getLogger(__name__)

SHARED = ".shared_prefix"  # in a sweep's folder: one folder per group of epoch arms
LOCK = "lock"  # in a group's folder while a job has its turn
TAKEN_FROM = "taken_from"  # summary.json: the group's training an arm was written from
# Schedules whose steps are spread over trainer.epochs: a shorter arm alone would differ.
SPREAD_OVER_EPOCHS = ("cosine", "onecycle")


def levels(cfg: DictConfig) -> list[int]:
    """The epoch levels this run shares its prefix with (its own among them), or [] when it
    trains alone: no levels given, only its own, or a schedule spread over the epochs."""
    shared = sorted({int(e) for e in cfg.reuse.get("shared_epochs") or []})
    if len(shared) < 2 or cfg.trainer.epochs not in shared:
        return []
    if choice(cfg.sched.name) in SPREAD_OVER_EPOCHS:
        log.info("trainer.epochs arms not shared: sched=%s spreads over the epochs",
                 choice(cfg.sched.name))
        return []
    return shared


def group_folder(cfg: DictConfig, job: Path) -> Path:
    """SHARED/ID in the job's sweep folder, ID naming the settings but trainer.epochs."""
    same = {k: v for k, v in settings(to_plain(cfg)).items() if k != "trainer.epochs"}
    digest = hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode())
    return job.parent / SHARED / digest.hexdigest()[:12]


def arm_folder(group: Path, epochs: int) -> Path:
    return group / f"epochs={epochs}"


def train_shared(cfg: DictConfig, job: RunFolder, shared: list[int]) -> dict:
    """The job's run, taken from its group's training: written earlier by another job of
    the group, or trained now (to the longest level, writing every arm). Parallel jobs of
    one group (--jobs N) take turns: while one trains the group, the others wait for it and
    then take their arms. Returns the job's summary."""
    group = RunFolder(group_folder(cfg, job.path))
    group.path.mkdir(parents=True, exist_ok=True)
    try:
        with turn(group.path / LOCK):
            waiting = RunFolder(arm_folder(group.path, cfg.trainer.epochs))
            if is_complete(waiting):
                return take(waiting, job)
            return train_group(cfg, job, group, shared)
    finally:
        remove_if_empty(group.path)


@contextmanager
def turn(lock: Path) -> Iterator[None]:
    """This process's turn at a group: an exclusive lock on the file, which the system
    releases however the process ends (kill -9 too); the file goes with the turn."""
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def train_group(cfg: DictConfig, job: RunFolder, group: RunFolder, shared: list[int]) -> dict:
    """Train the group to its longest level in its folder (continuing from its last.pt
    when resuming), writing every arm as its last epoch ends; returns the job's summary."""
    longest = copy.deepcopy(cfg)
    longest.trainer.epochs = shared[-1]
    longest.resume = bool(cfg.get("resume")) and group.last.is_file()
    summary = {"status": "running", "model": cfg.model.name, "seed": cfg.seed,
               "started": run_folder.utc_now(), **provenance.record()}
    taken = f"trainer.epochs={shared[-1]}"  # the run of the same settings it is a part of
    log.info("trainer.epochs %s share their first epochs: training to %d in %s, writing each "
             "arm as its last epoch ends", ",".join(map(str, shared)), shared[-1], group.shown)
    writer = ArmWriter(cfg, job, group.path, shared, summary, taken)
    trackers = None
    try:
        device, plan = lifecycle.start(longest, group, summary)
        trackers = open_trackers(longest, group.path)
        data, model = lifecycle.prepare(longest, device, summary)
        lifecycle.train(longest, group, data, model, plan, summary, trackers, writer.on_epoch)
        trackers.finish(summary)
    except BaseException as e:
        lifecycle.record_end(e, group, dict(summary))
        if trackers is not None:
            trackers.close(summary)
        if is_complete(job):  # its own arm was written before: it stays as it is
            if isinstance(e, Exception):  # the longer arms' jobs meet the error themselves
                log.warning("the training of the longer arms ended early (%s); this run's "
                            "%d epochs were complete before", e, cfg.trainer.epochs)
                return run_folder.read_json(job.summary)
            raise
        lifecycle.record_end(e, job, dict(summary))
        if isinstance(e, Diverged):  # as a run alone: the sweep goes on (lifecycle.py)
            raise UserError(str(e)) from e
        raise
    for done in (group.last, group.summary, group.metrics):  # the arms hold the results
        done.unlink(missing_ok=True)
    return run_folder.read_json(job.summary)


def remove_if_empty(group: Path) -> None:
    """The group's folder once no arm waits there, and SHARED once no group is left."""
    for folder in (group, group.parent):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def is_complete(folder: RunFolder) -> bool:
    return folder.summary.is_file() and \
        run_folder.read_json(folder.summary).get("status") == "completed"


def take(waiting: RunFolder, job: RunFolder) -> dict:
    """Move an arm written by its group's training into its job's folder."""
    for item in waiting.path.iterdir():
        target = job.path / item.name
        if target.is_dir():
            shutil.rmtree(target)
        shutil.move(str(item), target)
    waiting.path.rmdir()
    summary = run_folder.read_json(job.summary)
    log.info("taken from the %s run of the same settings, written when its epoch %d ended: "
             "test/acc %s -> %s", summary[TAKEN_FROM], summary["epochs"],
             pct(summary["test/acc"]), job.shown)
    return summary


class ArmWriter:
    """Writes each arm of the group as the training reaches its last epoch (or stops
    early before it)."""

    def __init__(self, cfg: DictConfig, job: RunFolder, group: Path, shared: list[int],
                 summary: dict, taken: str):
        self.cfg, self.job, self.group, self.summary, self.taken = cfg, job, group, summary, taken
        self.pending = list(shared)

    def on_epoch(self, epoch: EpochEnd, training: Training) -> None:
        done = epoch.record["epoch"]
        for arm in [a for a in self.pending if a == done or (epoch.early_stop and a > done)]:
            self.pending.remove(arm)
            self.write(arm, training, epoch)

    def write(self, arm: int, training: Training, epoch: EpochEnd) -> None:
        """The arm as a run of `arm` epochs alone would end: its kept weights (the best of
        its epochs with keep=best) on the test set, model.pt, report and summary.json. The
        training's model and random state are left as they were."""
        cfg = copy.deepcopy(self.cfg)
        cfg.trainer.epochs = arm
        own = arm == self.cfg.trainer.epochs
        folder = self.job if own else RunFolder(arm_folder(self.group, arm))
        if not own:  # written anew (a resume may find a part of it)
            shutil.rmtree(folder.path, ignore_errors=True)
        folder.path.mkdir(parents=True, exist_ok=True)
        stopper = training.stopper
        model = copy.deepcopy(training.model)
        if stopper.keep_best and stopper.best_weights is not None:
            model.load_state_dict(stopper.best_weights)
        # Its training time: the sum of its epochs' (across resumes, as for a run alone).
        summary = {**copy.deepcopy(self.summary), **epoch.train_path, TAKEN_FROM: self.taken,
                   "train_time_s": round(stopper.elapsed_s, 3)}
        records = list(training.records)
        run_folder.write_text(folder.metrics, "".join(json.dumps(r) + "\n" for r in records))
        devices = [training.device] if training.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            lifecycle.write_result(cfg, folder, training.data, model, records, stopper,
                                   training.loss_fn, summary)
        del model
