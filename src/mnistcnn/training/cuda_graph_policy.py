"""Whether a run's training step is captured as a CUDA graph: decided once per run from its
config and device (by `plan_graph`, before any data is read), and carried in a GraphPlan to
engine.Training, which builds the optimizer and the CudaGraphStep (cuda_graph.py) from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mnistcnn.base.config import choice
from mnistcnn.base.errors import UserError
from mnistcnn.training.cuda_graph import WARMUP_STEPS


@dataclass(frozen=True)
class GraphPlan:
    """A run's graph-or-eager decision. `eager_reason` says why the step runs eagerly (None:
    it is captured; summary.json's train_path_reason); `required` is trainer.cuda_graph=true,
    which turns a capture that cannot happen into a UserError; `reads` are the
    hyperparameters a captured step reads from tensors (None for an eager run)."""

    eager_reason: str | None
    required: bool = False
    reads: tuple[str, ...] | None = None

    @property
    def captured(self) -> bool:
        return self.eager_reason is None

    def check_reaches_capture(self, train_size: int, batch_size: int) -> None:
        """With trainer.cuda_graph=true, an epoch must hold the warm-up steps and the capture
        in full-size batches (the ragged last one runs eagerly), or the whole run would train
        eagerly and record so. Known once the training split is: called before training."""
        full = train_size // batch_size
        if not self.required or full > WARMUP_STEPS:
            return
        largest = train_size // (WARMUP_STEPS + 1)
        fix = f"trainer.batch_size={largest} or less, or " if largest else ""
        raise UserError(f"trainer.cuda_graph=true but an epoch of {train_size} training images "
                        f"has {full} full batches of {batch_size}, and the capture comes after "
                        f"{WARMUP_STEPS} warm-up steps; use {fix}trainer.cuda_graph=auto")


def plan_graph(cfg, device: torch.device) -> GraphPlan:
    """The run's GraphPlan. A combination that cannot be graphed trains eagerly with `auto`;
    with trainer.cuda_graph=true it is a user error, so nobody benchmarks the wrong loop."""
    setting = cuda_graph_setting(cfg)
    reason = "trainer.cuda_graph=false" if setting == "false" else why_eager(cfg, device)
    if reason is not None and setting == "true":
        raise UserError(f"trainer.cuda_graph=true but {reason}; "
                        f"use trainer.cuda_graph=auto or false")
    return GraphPlan(reason, required=setting == "true",
                     reads=scheduled_hyperparameters(cfg) if reason is None else None)


def cuda_graph_setting(cfg) -> str:
    """trainer.cuda_graph as "auto", "true" or "false" (YAML turns true/false into bools)."""
    return str(cfg.trainer.cuda_graph).lower()


def why_eager(cfg, device: torch.device) -> str | None:
    """Why this config on this device cannot be graphed; None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a GPU and this run trains on {device.type}"
    if cfg.trainer.compile:
        return ("trainer.compile=true (torch.compile makes its own graphs with "
                "trainer.compile_mode=reduce_overhead)")
    if choice(cfg.sched.name) == "onecycle" and choice(cfg.optim.name) in ("sgd", "rmsprop"):
        return (f"sched=onecycle cycles optim.momentum, which a captured "
                f"{choice(cfg.optim.name)} step would read as a constant")
    return None


def scheduled_hyperparameters(cfg) -> tuple[str, ...]:
    """The param_group keys the schedule changes during training: a replayed graph must read
    them from device tensors. Constant ones are baked into the graph as numbers."""
    sched, optim = choice(cfg.sched.name), choice(cfg.optim.name)
    if sched == "none":
        return ()
    if sched == "onecycle" and optim in ("adam", "adamw"):
        return ("lr", "betas")  # one-cycle moves Adam's beta1 against the learning rate
    return ("lr",)
