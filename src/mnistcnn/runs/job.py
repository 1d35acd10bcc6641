"""What a job does with its run folder: nothing when it completed before (resume), copy an
identical completed run (reuse.py), take or train its group's shared epochs
(shared_prefix.py), or train (lifecycle.py); and `train resume=PATH`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from mnistcnn.base import run_folder
from mnistcnn.base.config import read_saved_config, saved_config
from mnistcnn.base.errors import UserError
from mnistcnn.base.formats import pct
from mnistcnn.base.run_folder import CONFIG, LAST, RunFolder
from mnistcnn.runs import lifecycle, reuse, shared_prefix
from mnistcnn.training.checkpoints import safe_load
from mnistcnn.training.device import resolve_device

log = logging.getLogger(__name__)


def train_run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """The run of cfg in run_dir, trained or found; returns its summary, whose `status` says
    how it ended. With cfg.resume, a completed run is returned as it is and an interrupted
    one continues from its last.pt. With cfg.reuse.dirs, a completed run there that trained
    the same is copied instead; with cfg.reuse.shared_epochs, the run comes from one training
    of its epoch arms."""
    folder = RunFolder(Path(run_dir))
    if cfg.get("resume") and folder.summary.is_file():
        previous = run_folder.read_json(folder.summary)
        if previous.get("status") == "completed":
            log.info("%s already completed (test/acc %s); skipped", folder.shown,
                     pct(previous["test/acc"]))
            return previous
    if cfg.reuse.dirs:
        found = reuse.find(cfg, str(resolve_device(cfg.trainer.device)),
                           torch.get_num_threads(), folder.path)
        if found is not None:
            return reuse.take(found, folder)
    shared = shared_prefix.levels(cfg)
    if shared:
        return shared_prefix.train_shared(cfg, folder, shared)
    return lifecycle.run_training(cfg, folder)


def resume_run(run_dir: str | Path) -> dict:
    """`train resume=PATH`: continue a run in its own folder with its saved config."""
    folder = RunFolder(Path(run_dir))
    if folder.last.is_file():
        cfg = saved_config(safe_load(folder.last, "an mnistcnn resume checkpoint")["config"])
    elif folder.config.is_file():  # stopped before its first epoch ended: start it again
        cfg = saved_config(read_saved_config(folder.config, "restore it, or start the run "
                                             "again with `train`"))
    else:
        raise UserError(f"{folder.path} is not a run folder (no {LAST} or {CONFIG}); "
                        f"pass resume=PATH of a folder written by `train`")
    cfg.resume = True
    return train_run(cfg, folder.path)
