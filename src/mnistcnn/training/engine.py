"""The training core, read top to bottom: the state a run carries, one training step, one
epoch, evaluation, and `fit`, the epoch loop, which hands each epoch to the run as it ends.

A step trains on an index slice of the on-device training tensor. Per-batch losses and
correct counts stay on the device and are read every PROGRESS_EVERY batches (the divergence
check) and at the epoch's end. On a GPU the full-size steps are replayed as one CUDA graph
(cuda_graph.py, as the run's GraphPlan says); the step is the same function.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mnistcnn.base.errors import Diverged, Interrupted
from mnistcnn.data.dataset import Data, EpochDraw, Split, batches, draw_epoch, prepare
from mnistcnn.training.cuda_graph import CudaGraphStep
from mnistcnn.training.cuda_graph_policy import GraphPlan
from mnistcnn.training.device import (
    autocast,
    compiled,
    cpu_copy,
    reuse_freed_memory,
    rng_state,
    set_rng_state,
)
from mnistcnn.training.factories import (
    make_loss,
    make_optimizer,
    make_schedule,
    optimizer_flags,
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
    """What the loop carries from epoch to epoch, and its checkpointable state: built once
    per run, from `resume` (a `state()` saved after an epoch) when continuing. `plan` is the
    run's graph-or-eager decision (cuda_graph_policy.plan_graph)."""

    def __init__(self, model: nn.Module, data: Data, cfg, plan: GraphPlan,
                 resume: dict | None = None):
        self.model, self.data, self.cfg = model, data, cfg
        self.device = data.train.images.device
        self.forward = compiled(model, cfg.trainer)
        plan.check_reaches_capture(len(data.train), cfg.trainer.batch_size)
        self.eager_reason = plan.eager_reason  # for summary.json: None when captured
        self.opt = make_optimizer(model.parameters(), cfg.optim, plan.reads)
        self.steps = -(-len(data.train) // cfg.trainer.batch_size)
        self.stopper = EarlyStopping.from_config(cfg.trainer)
        self.schedule = make_schedule(self.opt, cfg.sched, cfg.trainer.epochs, self.steps,
                                      self.stopper.score)
        self.loss_fn = make_loss(cfg.loss, data.num_classes)
        # A CPU generator drives shuffling and augmentation, so runs repeat across devices.
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch_draw: EpochDraw | None = None  # on the device, overwritten every epoch
        self.totals = EpochTotals(self.device)
        # Positions 0..batch_size-1, added to the cursor to find a batch's images.
        self.offsets = torch.arange(cfg.trainer.batch_size, device=self.device)
        # Called as graph(self, batch_size): it holds the step function, not this object,
        # so no reference cycle keeps a finished run's graph and its memory alive.
        self.graph = (CudaGraphStep(train_step, self.opt, plan.reads, required=plan.required)
                      if plan.captured else None)
        if self.graph is None and self.device.type == "cuda":
            log.info("training step runs eagerly: %s", self.eager_reason)
        self.records: list[dict] = []
        if resume is not None:
            self.load_state(resume)

    def new_epoch(self) -> None:
        """Draw the epoch's order and augmentation; zero the totals."""
        draw = draw_epoch(len(self.data.train), self.cfg.data.augment, self.generator)
        if self.epoch_draw is None:
            self.epoch_draw = draw.to(self.device)
        else:
            self.epoch_draw.copy_(draw)
        self.totals.reset()

    def train_path(self) -> dict:
        """How the training steps ran, for summary.json: `train_path` is "eager" (with
        `train_path_reason`), "cuda_graph" (with `graph_replays`, the replayed steps) or
        "fallback" (a failed capture; the reason is its cause)."""
        if self.graph is None:
            return {"train_path": "eager", "train_path_reason": self.eager_reason}
        return self.graph.train_path()

    def release(self, after_error: bool = False) -> None:
        """Free the CUDA graph and its memory now (see CudaGraphStep.release)."""
        if self.graph is not None:
            self.graph.release(after_error)

    def state(self) -> dict:
        """Everything needed to continue after the last completed epoch."""
        return {"epoch": len(self.records), "records": list(self.records),
                "model": cpu_copy(self.model.state_dict()),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.schedule.state_dict(),
                "generator": self.generator.get_state(), "rng": rng_state(),
                "stopper": self.stopper.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(with_optimizer_flags(state["optimizer"],
                                                      optimizer_flags(self.opt)))
        self.schedule.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        self.records = list(state["records"])
        self.stopper.load_state_dict(state["stopper"])


# ----------------------------------------------------------------------------- one step
def train_step(training: Training, size: int) -> None:
    """Forward, loss, backward and optimizer step on the next `size` images of the epoch.

    The one training step: it runs eagerly on the CPU (and for an epoch's ragged last
    batch), and the same function is captured as a CUDA graph on a GPU. So everything it
    reads or writes lives in device tensors (the epoch's draw, the totals): no .item(), no
    host->device copy, no Python value that changes from step to step."""
    data, totals, draw = training.data, training.totals, training.epoch_draw
    pos = totals.cursor + training.offsets[:size]
    idx = draw.order[pos]
    x = prepare(data.train.images[idx], data.mean, data.std, draw.augmentation(pos))
    y = data.train.labels[idx]
    with autocast(training.device, training.cfg.trainer.precision):
        logits = training.forward(x)
        loss = training.loss_fn(logits, y)
    training.opt.zero_grad(set_to_none=True)
    loss.backward()
    training.opt.step()
    loss = loss.detach()
    totals.loss_sum.add_(loss * size)
    totals.correct.add_((logits.detach().argmax(1) == y).sum())
    step = totals.cursor // training.cfg.trainer.batch_size
    totals.bad_step.copy_(torch.where((totals.bad_step < 0) & ~loss.isfinite(), step,
                                      totals.bad_step))
    totals.cursor.add_(size)


# ----------------------------------------------------------------------------- one epoch
def train_epoch(training: Training, epoch: int, bar: tqdm | None,
                stop: Callable[[], bool] | None) -> tuple[float, float]:
    """One pass over the training split; returns (mean loss, accuracy)."""
    training.model.train()
    training.new_epoch()
    totals, graph = training.totals, training.graph
    n, batch_size = len(training.data.train), training.cfg.trainer.batch_size
    for step in range(training.steps):
        size = min(batch_size, n - step * batch_size)
        if graph is not None and size == batch_size:
            graph(training, size)
        else:
            train_step(training, size)
        training.schedule.after_batch()
        if step % PROGRESS_EVERY == 0 or step == training.steps - 1:
            # The only host reads inside an epoch: the divergence check and the bar.
            if totals.bad_step.item() >= 0:
                raise Diverged(epoch, int(totals.bad_step), training.opt.param_groups[0]["lr"])
            if bar is not None:
                bar.set_postfix(loss=f"{totals.loss_sum.item() / (step * batch_size + size):.4f}")
        if bar is not None:
            bar.update(1)
        if stop is not None and stop():
            raise Interrupted(epoch, step)
    return totals.loss_sum.item() / n, totals.correct.item() / n


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


def epoch_record(training: Training, epoch: int, stop: Callable[[], bool] | None) -> dict:
    """Train one epoch (with a progress bar on a terminal) and validate: the epoch's line of
    metrics.jsonl."""
    cfg, data = training.cfg, training.data
    lr = training.opt.param_groups[0]["lr"]
    start = time.perf_counter()
    bar = tqdm(total=training.steps, desc=f"epoch {epoch}/{cfg.trainer.epochs}", leave=False,
               file=sys.stderr) if sys.stderr.isatty() else None
    try:
        train_loss, train_acc = train_epoch(training, epoch, bar, stop)
    finally:
        if bar is not None:
            bar.close()
    record = {"epoch": epoch, "train/loss": train_loss, "train/acc": train_acc}
    if data.val is not None:
        val_loss, val_acc, _ = evaluate(training.forward, data.val, data, training.loss_fn,
                                        cfg.trainer.eval_batch_size, cfg.trainer.precision)
        record.update({"val/loss": val_loss, "val/acc": val_acc})
    record["lr"] = lr
    record["epoch_time_s"] = time.perf_counter() - start
    # Epoch-to-epoch change of the accuracy people watch: val when there is a val split.
    key = "val/acc" if data.val is not None else "train/acc"
    records = training.records
    record["acc_change"] = record[key] - records[-1][key] if records else None
    return record


# ----------------------------------------------------------------------------- the epochs
@dataclass(frozen=True)
class EpochEnd:
    """What `fit` hands the run as an epoch ends: its record (a line of metrics.jsonl), the
    state that continues after it (last.pt, less the run's identity; its optimizer tensors
    are the live ones: save it before asking for the next epoch), how the steps ran so far
    (summary.json's train_path keys) and, when early stopping ends the run here, why (a log
    line; None while training goes on)."""

    record: dict
    state: dict
    train_path: dict
    early_stop: str | None


def fit(training: Training, stop: Callable[[], bool] | None = None) -> Iterator[EpochEnd]:
    """Train the epochs cfg.trainer.epochs asks for after those `training` has done, until
    early stopping says stop, yielding each epoch as it ends. `stop` is polled after every
    batch: when it returns True the loop raises Interrupted after that batch. When the epochs
    are done the model holds the weights the run keeps (trainer.keep: the last or the best
    epoch's). The CUDA graph is released however training ends: close the generator (or
    exhaust it) to end it early."""
    reuse_freed_memory()
    stopper = training.stopper
    try:
        for epoch in range(len(training.records) + 1, training.cfg.trainer.epochs + 1):
            if stopper.stopped:  # also when resuming a run that had stopped
                break
            record = epoch_record(training, epoch, stop)
            training.records.append(record)
            stopper.update(record, training.model)
            training.schedule.after_epoch(record)
            yield EpochEnd(record, training.state(), training.train_path(),
                           stopper.describe() if stopper.stopped else None)
    except BaseException:
        training.release(after_error=True)
        raise
    training.release()
    if stopper.keep_best:
        training.model.load_state_dict(stopper.best_weights)
