"""A run's checkpoints: model.pt (the kept weights) and last.pt (everything needed to resume),
written as plain dicts of tensors and primitives and read back with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from mnistcnn import models
from mnistcnn.base import run_folder
from mnistcnn.base.config import saved_config, to_plain
from mnistcnn.base.errors import UserError
from mnistcnn.base.run_folder import MODEL, RunFolder
from mnistcnn.data.dataset import Data
from mnistcnn.training.device import cpu_copy, place_model


def run_identity(cfg: DictConfig, data: Data) -> dict:
    """What a checkpoint needs besides weights to be used alone: config and normalisation."""
    return {"config": to_plain(cfg), "class_names": data.class_names,
            "mean": data.mean, "std": data.std}


def save_checkpoint(path: Path, model: torch.nn.Module, cfg: DictConfig,
                    data: Data) -> None:
    """Plain dict of tensors and primitives: loadable with torch.load(weights_only=True)."""
    run_folder.save_torch(path, {"model": cpu_copy(model.state_dict()), **run_identity(cfg, data)})


def safe_load(path: Path, what: str) -> dict:
    """torch.load with weights_only=True: a pickle that would run code is refused unrun."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} cannot be loaded safely ({type(e).__name__}); it is damaged "
                        f"or not {what}") from e
    if not isinstance(ckpt, dict) or not {"model", "config"} <= ckpt.keys():
        raise UserError(f"{path} is not {what}")
    return ckpt


def load_training_state(path: Path) -> dict | None:
    return safe_load(path, "an mnistcnn resume checkpoint") if path.is_file() else None


def load_checkpoint(run_dir: Path) -> dict:
    path = RunFolder(run_dir).model
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} does not exist; pass run=PATH of a folder written by "
                        f"`train` (outputs/runs/...)")
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished run (no {MODEL}); "
                        f"pass run=PATH of a folder written by `train`")
    return safe_load(path, "an mnistcnn checkpoint; pass a run folder written by `train`")


def load_run_model(run_dir: Path, device: torch.device
                   ) -> tuple[torch.nn.Module, DictConfig, dict]:
    """(model with model.pt's weights on the device, saved config, checkpoint)."""
    ckpt = load_checkpoint(run_dir)
    cfg = saved_config(ckpt["config"])
    model = place_model(models.build(cfg.model, len(ckpt["class_names"])), device)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{RunFolder(run_dir).model} does not match its config's model "
                        f"({cfg.model.name}); the checkpoint is from a different model") from e
    return model, cfg, ckpt
