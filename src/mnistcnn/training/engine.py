"""The training core: the state a run carries, the step, the epoch, fit, and evaluation.

What it trains with (device, seeds, optimizer, schedule, loss) is built in
training_setup.py. Read this file top to bottom: `fit` runs epochs of `train_epoch`,
which runs `train_step` once per batch: an index slice of the on-device training
tensor. Per-batch losses and correct counts stay on the device and are read every
PROGRESS_EVERY batches (the divergence check) and at the epoch's end. On a GPU the
full-size steps are replayed as one CUDA graph (graphed.py); the step is the same function.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mnistcnn.base.errors import Diverged, Interrupted
from mnistcnn.data.dataset import Data, EpochDraw, Split, batches, draw_epoch, prepare
from mnistcnn.training.cuda_graph import CudaGraphStep
from mnistcnn.training.setup import (
    autocast,
    compiled,
    cuda_graph_setting,
    graph_off_reason,
    make_loss,
    make_optimizer,
    make_scheduler,
    reuse_freed_memory,
    rng_state,
    scheduled_hyperparameters,
    set_rng_state,
    with_optimizer_flags,
)
from mnistcnn.training.stopping import EarlyStopping

log = logging.getLogger(__name__)
PROGRESS_EVERY = 25  # batches between progress-bar updates (each update syncs the device)


# ----------------------------------------------------------------------------- state
class EpochTotals:
    """Device tensors a training step adds to: where the next batch starts in the epoch's
    order, the loss sum, the correct count and the first non-finite batch (-1: none).

    Updated in place by the step, so a captured CUDA graph keeps adding to the same memory;
    read on the host only every PROGRESS_EVERY batches and at the end of the epoch."""

    def __init__(self, device: torch.device):
        self.cursor = torch.zeros((), dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.cursor.zero_()
        self.loss_sum.zero_()
        self.correct.zero_()
        self.bad_step.fill_(-1)


class Training:
    """What the loop carries from epoch to epoch, and its checkpointable state."""

    def __init__(self, model: nn.Module, data: Data, cfg):
        self.model, self.data, self.cfg = model, data, cfg
        self.device = data.train.images.device
        self.forward = compiled(model, cfg.trainer)
        # Why the step runs eagerly (None: it is captured), for summary.json.
        self.eager_reason = graph_off_reason(cfg, self.device)
        graphed = self.eager_reason is None
        graph_reads = scheduled_hyperparameters(cfg) if graphed else None
        self.opt = make_optimizer(model.parameters(), cfg.optim, graph_reads)
        self.steps = -(-len(data.train) // cfg.trainer.batch_size)
        self.sched, self.sched_unit = make_scheduler(self.opt, cfg.sched, cfg.trainer.epochs,
                                                     self.steps)
        self.loss_fn = make_loss(cfg.loss, data.num_classes)
        # A CPU generator drives shuffling and augmentation, so runs repeat across devices.
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch_draw: EpochDraw | None = None  # on the device, overwritten every epoch
        self.totals = EpochTotals(self.device)
        # Positions 0..batch_size-1, added to the cursor to find a batch's images.
        self.offsets = torch.arange(cfg.trainer.batch_size, device=self.device)
        # Called as graph(self, batch_size): it holds the step function, not this object,
        # so no reference cycle keeps a finished run's graph and its memory alive.
        self.graph = CudaGraphStep(train_step, self.opt, graph_reads,
                                   required=cuda_graph_setting(cfg) == "true") if graphed else None
        if not graphed and self.device.type == "cuda":
            log.info("training step runs eagerly: %s", self.eager_reason)
        self.records: list[dict] = []

    def new_epoch(self) -> None:
        """Draw the epoch's order and augmentation; zero the totals."""
        draw = draw_epoch(len(self.data.train), self.cfg.data.augment, self.generator)
        if self.epoch_draw is None:
            self.epoch_draw = draw.to(self.device)
        else:
            self.epoch_draw.copy_(draw)
        self.totals.reset()

    def path(self) -> dict:
        """How the training steps ran, for summary.json: `train_path` is "eager" (with
        `train_path_reason`), "cuda_graph" (with `graph_replays`, the replayed steps) or
        "fallback" (a failed capture; the reason is its cause)."""
        if self.graph is None:
            return {"train_path": "eager", "train_path_reason": self.eager_reason}
        return self.graph.path()

    def state(self) -> dict:
        """Everything needed to continue after the last completed epoch."""
        return {"epoch": len(self.records), "records": list(self.records),
                "model": {k: v.detach().cpu().clone() for k, v in
                          self.model.state_dict().items()},
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched else None,
                "generator": self.generator.get_state(), "rng": rng_state(),
                "stopper": self.stopper.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(with_optimizer_flags(state["optimizer"], self.opt))
        if self.sched:
            self.sched.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        self.records = list(state["records"])
        if state.get("stopper") is not None:  # absent in checkpoints from before it existed
            self.stopper.load_state_dict(state["stopper"])


# ----------------------------------------------------------------------------- loops
def train_step(t: Training, size: int) -> None:
    """Forward, loss, backward and optimizer step on the next `size` images of the epoch.

    The one training step: it runs eagerly on the CPU (and for an epoch's ragged last
    batch), and the same function is captured as a CUDA graph on a GPU. So everything it
    reads or writes lives in device tensors (the epoch's draw, the totals): no .item(), no
    host->device copy, no Python value that changes from step to step."""
    data, totals, draw = t.data, t.totals, t.epoch_draw
    pos = totals.cursor + t.offsets[:size]
    idx = draw.order[pos]
    x = prepare(data.train.images[idx], data.mean, data.std, draw.augmentation(pos))
    y = data.train.labels[idx]
    with autocast(t.device, t.cfg.trainer.precision):
        logits = t.forward(x)
        loss = t.loss_fn(logits, y)
    t.opt.zero_grad(set_to_none=True)
    loss.backward()
    t.opt.step()
    loss = loss.detach()
    totals.loss_sum.add_(loss * size)
    totals.correct.add_((logits.detach().argmax(1) == y).sum())
    step = totals.cursor // t.cfg.trainer.batch_size
    totals.bad_step.copy_(torch.where((totals.bad_step < 0) & ~loss.isfinite(), step,
                                      totals.bad_step))
    totals.cursor.add_(size)


def train_epoch(t: Training, epoch: int, bar: tqdm | None,
                stop: Callable[[], bool] | None) -> tuple[float, float]:
    """One pass over the training split; returns (mean loss, accuracy)."""
    t.model.train()
    t.new_epoch()
    n, batch_size = len(t.data.train), t.cfg.trainer.batch_size
    for step in range(t.steps):
        size = min(batch_size, n - step * batch_size)
        if t.graph is not None and size == batch_size:
            t.graph(t, size)
        else:
            train_step(t, size)
        if t.sched_unit == "batch":
            t.sched.step()
        if step % PROGRESS_EVERY == 0 or step == t.steps - 1:
            # The only host reads inside an epoch: the divergence check and the bar.
            if t.totals.bad_step.item() >= 0:
                raise Diverged(epoch, int(t.totals.bad_step), t.opt.param_groups[0]["lr"])
            if bar is not None:
                bar.set_postfix(loss=f"{t.totals.loss_sum.item() / (step * batch_size + size):.4f}")
        if bar is not None:
            bar.update(1)
        if stop is not None and stop():
            raise Interrupted(epoch, step)
    if t.sched_unit == "epoch":
        t.sched.step()
    return t.totals.loss_sum.item() / n, t.totals.correct.item() / n


@torch.inference_mode()
def predict(model: nn.Module, split: Split, data: Data, batch_size: int,
            precision: Any = "fp32") -> torch.Tensor:
    """fp32 logits for every image of a split, in order, in eval mode."""
    model.eval()
    device = split.images.device
    with autocast(device, precision):
        return torch.cat([model(prepare(split.images[idx], data.mean, data.std)).float()
                          for idx in batches(len(split), batch_size, device)])


def evaluate(model: nn.Module, split: Split, data: Data, loss_fn, batch_size: int,
             precision: Any = "fp32") -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, logits) on a split."""
    logits = predict(model, split, data, batch_size, precision)
    loss = loss_fn(logits, split.labels).item()
    acc = (logits.argmax(1) == split.labels).float().mean().item()
    return loss, acc, logits


def fit(model: nn.Module, data: Data, cfg, on_epoch: Callable[[dict, Training], None],
        resume: dict | None = None, stop: Callable[[], bool] | None = None,
        stopper: EarlyStopping | None = None) -> list[dict]:
    """Train for cfg.trainer.epochs (continuing from a `Training.state()` when resuming),
    or until `stopper` (built from cfg.trainer when not given) says stop; call
    on_epoch(record, training) as each epoch ends. `stop` is polled after every
    batch: when it returns True the loop raises Interrupted after that batch."""
    reuse_freed_memory()
    t = Training(model, data, cfg)
    t.stopper = stopper if stopper is not None else EarlyStopping.from_config(cfg.trainer)
    if resume is not None:
        t.load_state(resume)
    try:
        return train_epochs(t, data, cfg, on_epoch, stop)
    finally:
        if t.graph is not None:
            t.graph.release()


def train_epochs(t: Training, data: Data, cfg, on_epoch: Callable[[dict, Training], None],
                 stop: Callable[[], bool] | None) -> list[dict]:
    """fit's epochs: train, validate, record, early-stop, schedule."""
    interactive = sys.stderr.isatty()
    epochs = cfg.trainer.epochs
    for epoch in range(len(t.records) + 1, epochs + 1):
        if t.stopper.stopped:  # also when resuming a run that had stopped
            break
        lr = t.opt.param_groups[0]["lr"]
        start = time.perf_counter()
        bar = tqdm(total=t.steps, desc=f"epoch {epoch}/{epochs}", leave=False,
                   file=sys.stderr) if interactive else None
        try:
            train_loss, train_acc = train_epoch(t, epoch, bar, stop)
        finally:
            if bar is not None:
                bar.close()
        record = {"epoch": epoch, "train/loss": train_loss, "train/acc": train_acc}
        if data.val is not None:
            val_loss, val_acc, _ = evaluate(t.forward, data.val, data, t.loss_fn,
                                            cfg.trainer.eval_batch_size, cfg.trainer.precision)
            record.update({"val/loss": val_loss, "val/acc": val_acc})
        record["lr"] = lr
        record["epoch_time_s"] = time.perf_counter() - start
        # Epoch-to-epoch change of the accuracy people watch: val when there is a val split.
        key = "val/acc" if data.val is not None else "train/acc"
        record["acc_change"] = record[key] - t.records[-1][key] if t.records else None
        t.records.append(record)
        t.stopper.update(record, t.model)
        if t.sched_unit == "plateau":
            t.sched.step(t.stopper.score(record))
        on_epoch(record, t)
    return t.records
