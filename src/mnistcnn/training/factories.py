"""What a run trains with, built from its config: the optimizer (and the constructor flags
that pick its code path, eager or captured in a CUDA graph), the learning-rate schedule and
when it steps, and the loss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mnistcnn.base.config import choice
from mnistcnn.base.errors import UserError

# The constructor flags that pick an optimizer's code path, as torch defaults them: what an
# eager run's optimizer has (optimizer_options sets them for a captured step).
EAGER_FLAGS = {"capturable": False, "fused": None, "foreach": None}


# ---------------------------------------------------------------------------------- optimizer
def make_optimizer(params, cfg, graph_reads: tuple[str, ...] | None = None
                   ) -> torch.optim.Optimizer:
    """The configured optimizer; for a captured step, `graph_reads` (the hyperparameters the
    graph reads from tensors: cuda_graph_policy.scheduled_hyperparameters) adds the flags it
    needs."""
    name = cfg.name
    common = {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
              **optimizer_options(name, graph_reads)}
    if name == "adam":
        return torch.optim.Adam(params, betas=tuple(cfg.betas), **common)
    if name == "adamw":
        return torch.optim.AdamW(params, betas=tuple(cfg.betas), **common)
    if name == "sgd":
        if cfg.nesterov and not cfg.momentum:
            raise UserError("optim.nesterov=true needs optim.momentum > 0")
        return torch.optim.SGD(params, momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, alpha=cfg.alpha, momentum=cfg.momentum, **common)
    if name == "adadelta":
        return torch.optim.Adadelta(params, rho=cfg.rho, **common)
    raise ValueError(f"unknown optimizer {name}")


def optimizer_options(name: str, graph_reads: tuple[str, ...] | None) -> dict[str, Any]:
    """Constructor flags that let an optimizer step be captured and read `graph_reads` (None
    for an eager run) from device tensors: `capturable` keeps the step count on the GPU; SGD
    has no such flag, and its fused kernel is the one that takes a tensor lr. The code path is
    named, not left to the device's default, because only one path of each optimizer reads a
    tensor lr without a host sync (which would break the capture): the foreach one
    (RMSprop's and Adadelta's per-parameter paths call .item())."""
    if graph_reads is None:
        return {}
    if name == "sgd":
        return {"fused": True}
    if "betas" in graph_reads:
        # Adam's foreach kernels take beta1 only as a number: a tensor beta1 is read to the
        # host with .item(). Its per-parameter path lerps with a tensor weight and reads nothing.
        return {"capturable": True, "foreach": False}
    return {"capturable": True, "foreach": True}


def optimizer_flags(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The code-path flags `opt` was built with (those of EAGER_FLAGS its kind has)."""
    return {k: v for k, v in opt.param_groups[0].items() if k in EAGER_FLAGS}


def with_optimizer_flags(saved: dict, flags: dict[str, Any]) -> dict:
    """A saved optimizer state whose groups carry `flags` (optimizer_flags of the optimizer
    that loads it), so a run saved on one device or loop resumes on another: load_state_dict
    moves the step counts where those flags want them."""
    saved = copy.copy(saved)
    saved["param_groups"] = [{**group, **flags} for group in saved["param_groups"]]
    return saved


def train_eagerly(opt: torch.optim.Optimizer) -> None:
    """Turn an optimizer built for a captured step into the one an eager run builds, keeping
    its state: loaded back as an eager resume loads last.pt, with its step counts on the host
    (where the non-capturable code paths keep them and load_state_dict leaves them)."""
    eager = {k: EAGER_FLAGS[k] for k in optimizer_flags(opt)}
    saved = opt.state_dict()
    saved["state"] = {index: {k: v.cpu() if k == "step" else v for k, v in state.items()}
                      for index, state in saved["state"].items()}
    opt.load_state_dict(with_optimizer_flags(saved, eager))


# ----------------------------------------------------------------------------------- schedule
class Schedule:
    """The learning-rate scheduler and when it steps, the one place that knows: after every
    batch (cosine, onecycle), after every epoch (step), or after every epoch with the
    monitored value (plateau, which minimises `score(record)`: EarlyStopping.score). With
    sched=none there is no scheduler and nothing steps."""

    def __init__(self, scheduler: Any, unit: str | None,
                 score: Callable[[dict], float] | None = None):
        self.scheduler, self.unit, self.score = scheduler, unit, score

    def after_batch(self) -> None:
        if self.unit == "batch":
            self.scheduler.step()

    def after_epoch(self, record: dict) -> None:
        if self.unit == "epoch":
            self.scheduler.step()
        elif self.unit == "plateau":
            self.scheduler.step(self.score(record))

    def state_dict(self) -> dict | None:
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


def make_schedule(opt, cfg, epochs: int, steps_per_epoch: int,
                  score: Callable[[dict], float] | None = None) -> Schedule:
    """The configured schedule: step decays per epoch, cosine and onecycle per batch, plateau
    per epoch with `score` of the epoch's record."""
    total = epochs * steps_per_epoch
    if cfg.name == "none":
        return Schedule(None, None)
    if cfg.name == "step":
        return Schedule(torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma), "epoch")
    if cfg.name == "cosine":
        return Schedule(torch.optim.lr_scheduler.CosineAnnealingLR(opt, total,
                                                                   eta_min=cfg.min_lr), "batch")
    if cfg.name == "onecycle":
        max_lr = cfg.max_lr or opt.param_groups[0]["lr"]
        # One-cycle also cycles momentum (Adam's beta1); Adadelta has none to cycle.
        has_momentum = "momentum" in opt.defaults or "betas" in opt.defaults
        return Schedule(torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr, total_steps=total, pct_start=cfg.pct_start,
            cycle_momentum=has_momentum), "batch")
    if cfg.name == "plateau":
        # Minimises EarlyStopping.score (accuracies come negated); "abs" because the
        # default relative threshold assumes positive values. Any improvement counts.
        return Schedule(torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.factor, patience=cfg.patience, threshold=0.0,
            threshold_mode="abs", min_lr=cfg.min_lr), "plateau", score)
    raise ValueError(f"unknown schedule {cfg.name}")


# --------------------------------------------------------------------------------------- loss
def make_loss(cfg, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Models output logits; the loss decides what to do with them."""
    name, smoothing = choice(cfg.name), cfg.label_smoothing
    if name == "cross_entropy":
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing)
    if name == "nll":
        # NLL on log-softmax outputs (the classic PyTorch recipe); with smoothing the
        # smoothed one-hot targets weight the log-probabilities.
        def nll(logits, y):
            logp = F.log_softmax(logits, dim=1)
            if not smoothing:
                return F.nll_loss(logp, y)
            return -(_smoothed_one_hot(y, num_classes, smoothing) * logp).sum(1).mean()
        return nll
    if name == "mse":
        # MSE between softmax probabilities and (smoothed) one-hot targets, as Keras does
        # with a softmax output layer and mean_squared_error.
        return lambda logits, y: F.mse_loss(F.softmax(logits, dim=1),
                                            _smoothed_one_hot(y, num_classes, smoothing))
    raise ValueError(f"unknown loss {name}")


def _smoothed_one_hot(y: torch.Tensor, k: int, smoothing: float) -> torch.Tensor:
    # A comparison, not F.one_hot: one_hot checks the labels' range on the host, a sync
    # that a CUDA graph capture cannot contain.
    one_hot = (y[:, None] == torch.arange(k, device=y.device)).float()
    return one_hot * (1 - smoothing) + smoothing / k
