"""Where and how a run computes: the device, the model placed on it, bf16 autocast,
torch.compile, the allocator setting, seeds and every RNG's state, and the CPU copy of
weights that checkpoints and the best epoch keep.
"""

from __future__ import annotations

import ctypes
import functools
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistcnn.base.config import choice
from mnistcnn.base.errors import UserError


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


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A module's state_dict as CPU tensors of its own: a copy even on the CPU, so the steps
    that follow do not change it (checkpoints, the resume state, the best epoch's weights)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


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
