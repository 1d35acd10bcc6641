"""What a run trains with, built from its config: device, seeds and RNG state, optimizer,
schedule, loss, and whether (and how) its training step can be captured as a CUDA graph.

engine.py is the training core that uses these; graphed.py captures and replays the step.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnistcnn.base.config import choice
from mnistcnn.base.errors import UserError

# Optimizer flags a graphed run sets (see optimizer_options), kept through a resume.
OPTIMIZER_FLAGS = ("capturable", "fused", "foreach")


# ---------------------------------------------------------------------------- device and RNG
def resolve_device(name: Any) -> torch.device:
    name = choice(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA GPU is available; "
                        "use trainer.device=cpu or auto")
    return torch.device(name)


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to the device in channels_last layout: oneDNN's convolutions on the CPU run
    35-65% faster on these small nets in that layout (measured: scripts/bench.py)."""
    return model.to(device=device, memory_format=torch.channels_last)


def autocast(device: torch.device, precision: Any):
    """bf16 autocast for forward passes when asked for; a no-op context for fp32.
    Without the cast cache, which a CUDA graph capture cannot use (each weight is cast
    once per forward pass here anyway)."""
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=choice(precision) == "bf16", cache_enabled=False)


def compiled(model: nn.Module, trainer) -> nn.Module:
    """The module training and validation call: torch.compile'd when trainer.compile is set.
    The original module keeps the weights, so checkpoints and the report never see the wrapper."""
    if not trainer.compile:
        return model
    return torch.compile(model, mode=choice(trainer.compile_mode), dynamic=False)


@functools.cache
def reuse_freed_memory() -> None:
    """Make glibc keep freed activation buffers for reuse instead of returning them to the OS.

    By default a buffer of a few MB is mmap'ed on allocation and unmapped when freed,
    so every batch page-faults its activations in again: about a fifth of the Keras net's
    step time on a 2-core CPU (measured: 575k page faults in 50 steps, 157k with this).
    Called once per process by `fit`; a no-op where libc has no mallopt."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum; larger blocks are mmap'ed anyway
    mallopt(m_trim_threshold, 2**30)  # keep up to 1 GiB of freed heap before trimming


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every RNG and set deterministic mode as this run asks. The mode is process-wide,
    so it is set both ways: an in-process sweep (or a reused joblib worker) would otherwise
    keep a deterministic run's mode for every run after it, while their summaries say
    false."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=deterministic)
    if deterministic:
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """Every RNG a run draws from, as tensors and primitives (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ optimizer, schedule, loss
def make_optimizer(params, cfg, graph_reads: tuple[str, ...] | None = None
                   ) -> torch.optim.Optimizer:
    """The configured optimizer; for a captured step, `graph_reads` (the hyperparameters the
    graph reads from tensors, see scheduled_hyperparameters below) adds the flags it needs."""
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


def make_scheduler(opt, cfg, epochs: int, steps_per_epoch: int):
    """(scheduler or None, "epoch" | "batch" | "plateau"): step decays per epoch, cosine and
    onecycle per batch; plateau is stepped by `fit` with the monitored value after each epoch."""
    total = epochs * steps_per_epoch
    if cfg.name == "none":
        return None, None
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma), "epoch"
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, total, eta_min=cfg.min_lr), "batch"
    if cfg.name == "onecycle":
        max_lr = cfg.max_lr or opt.param_groups[0]["lr"]
        # One-cycle also cycles momentum (Adam's beta1); Adadelta has none to cycle.
        has_momentum = "momentum" in opt.defaults or "betas" in opt.defaults
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr, total_steps=total,
                                                   pct_start=cfg.pct_start,
                                                   cycle_momentum=has_momentum), "batch"
    if cfg.name == "plateau":
        # Minimises EarlyStopping.score (accuracies come negated); "abs" because the
        # default relative threshold assumes positive values. Any improvement counts.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.factor, patience=cfg.patience, threshold=0.0,
            threshold_mode="abs", min_lr=cfg.min_lr), "plateau"
    raise ValueError(f"unknown schedule {cfg.name}")


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


# ------------------------------------------------------------------------ CUDA graph or eager
def cuda_graph_setting(cfg) -> str:
    """trainer.cuda_graph as "auto", "true" or "false" (YAML turns true/false into bools)."""
    return str(cfg.trainer.cuda_graph).lower()


def graph_off_reason(cfg, device: torch.device) -> str | None:
    """None when the training step will be captured; otherwise why it runs eagerly.

    A combination that cannot be graphed trains eagerly with `auto`; with
    trainer.cuda_graph=true it is a user error, so nobody benchmarks the wrong loop."""
    setting = cuda_graph_setting(cfg)
    if setting == "false":
        return "trainer.cuda_graph=false"
    reason = None
    if device.type != "cuda":
        reason = f"CUDA graphs need a GPU and this run trains on {device.type}"
    elif cfg.trainer.compile:
        reason = ("trainer.compile=true (torch.compile makes its own graphs with "
                  "trainer.compile_mode=reduce_overhead)")
    elif choice(cfg.sched.name) == "onecycle" and choice(cfg.optim.name) in ("sgd", "rmsprop"):
        reason = (f"sched=onecycle cycles optim.momentum, which a captured "
                  f"{choice(cfg.optim.name)} step would read as a constant")
    if reason is not None and setting == "true":
        raise UserError(f"trainer.cuda_graph=true but {reason}; "
                        f"use trainer.cuda_graph=auto or false")
    return reason


def scheduled_hyperparameters(cfg) -> tuple[str, ...]:
    """The param_group keys the schedule changes during training: a replayed graph must read
    them from device tensors. Constant ones are baked into the graph as numbers."""
    sched, optim = choice(cfg.sched.name), choice(cfg.optim.name)
    if sched == "none":
        return ()
    if sched == "onecycle" and optim in ("adam", "adamw"):
        return ("lr", "betas")  # one-cycle moves Adam's beta1 against the learning rate
    return ("lr",)


def optimizer_options(name: str, graph_reads: tuple[str, ...] | None) -> dict[str, Any]:
    """Constructor flags that let an optimizer step be captured and read `graph_reads` (from
    scheduled_hyperparameters; None for an eager run) from device tensors: `capturable`
    keeps the step count on the GPU; SGD has no such flag, and its fused kernel is the one
    that takes a tensor lr. The code path is named, not left to the device's default, because
    only one path of each optimizer reads a tensor lr without a host sync (which would break
    the capture): the foreach one (RMSprop's and Adadelta's per-parameter paths call .item())."""
    if graph_reads is None:
        return {}
    if name == "sgd":
        return {"fused": True}
    if "betas" in graph_reads:
        # Adam's foreach kernels take beta1 only as a number: a tensor beta1 is read to the
        # host with .item(). Its per-parameter path lerps with a tensor weight and reads nothing.
        return {"capturable": True, "foreach": False}
    return {"capturable": True, "foreach": True}


def with_optimizer_flags(saved: dict, opt: torch.optim.Optimizer) -> dict:
    """A saved optimizer state whose groups carry `opt`'s capturable/fused/foreach flags, so
    a run saved on one device or loop resumes on another (load_state_dict moves the step
    counts where those flags want them)."""
    saved = copy.copy(saved)
    flags = {k: v for k, v in opt.param_groups[0].items() if k in OPTIMIZER_FLAGS}
    saved["param_groups"] = [{**group, **flags} for group in saved["param_groups"]]
    return saved
