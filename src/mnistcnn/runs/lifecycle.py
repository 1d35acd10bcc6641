"""One training run in its folder: prepare (check, data, model) -> fit -> finish (test,
model.pt, report, summary.json); and how a run that ends early is recorded. runs/job.py
decides whether a job trains at all.

Everything written here is derived from the config and the training itself,
so `evaluate` can rebuild the evaluation files later from model.pt alone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import closing

import torch
from omegaconf import DictConfig
from torch import nn

from mnistcnn import models
from mnistcnn.base import provenance, run_folder
from mnistcnn.base.errors import Diverged, Interrupted, UserError
from mnistcnn.base.formats import amount, pct
from mnistcnn.base.run_folder import RunFolder
from mnistcnn.base.signals import StopOnSignal
from mnistcnn.data import dataset
from mnistcnn.reporting import run_report
from mnistcnn.reporting.predictions import write_predictions
from mnistcnn.runs.console import format_epoch, log_class_findings
from mnistcnn.runs.preflight import check_run
from mnistcnn.tracking.trackers import Trackers, open_trackers
from mnistcnn.training.checkpoints import load_training_state, run_identity, save_checkpoint
from mnistcnn.training.cuda_graph import describe_path
from mnistcnn.training.cuda_graph_policy import GraphPlan, plan_graph
from mnistcnn.training.device import place_model, resolve_device, seed_everything
from mnistcnn.training.engine import EpochEnd, Training, evaluate, fit
from mnistcnn.training.stopping import EarlyStopping

log = logging.getLogger(__name__)


def run_training(cfg: DictConfig, folder: RunFolder) -> dict:
    """Train as configured, writing metrics.jsonl, last.pt (every epoch), summary.json,
    predictions.csv, model.pt and the report into the folder. Returns the summary; its
    `status` says how the run ended. With cfg.resume it continues from last.pt."""
    summary = {"status": "running", "model": cfg.model.name, "seed": cfg.seed,
               "started": run_folder.utc_now(), **provenance.record()}
    trackers = None
    try:
        device, plan = start(cfg, folder, summary)
        trackers = open_trackers(cfg, folder.path)
        data, model = prepare(cfg, device, summary)
        training = train(cfg, folder, data, model, plan, summary, trackers)
        finish(cfg, folder, data, training, summary)
        trackers.finish(summary)
        return summary
    except BaseException as e:
        record_end(e, folder, summary)
        if trackers is not None:
            trackers.close(summary)
        if isinstance(e, Diverged):
            raise UserError(str(e)) from e
        raise


def start(cfg: DictConfig, folder: RunFolder, summary: dict):
    """Every check that needs no data, then the first summary.json; returns the device and
    the run's graph-or-eager plan (trainer.cuda_graph=true that cannot be fails here)."""
    check_run(cfg)
    device = resolve_device(cfg.trainer.device)
    plan = plan_graph(cfg, device)
    summary["device"] = str(device)
    if device.type == "cpu":  # the thread count changes a CPU run's numbers in the last digits
        summary["cpu_threads"] = torch.get_num_threads()
    run_folder.write_json(folder.summary, summary)
    return device, plan


def prepare(cfg: DictConfig, device, summary: dict) -> tuple[dataset.Data, nn.Module]:
    """Seeds, the data on the device and the model built for it."""
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    t0 = time.perf_counter()
    data = dataset.load(cfg.data, device, cfg.seed)
    summary["data_load_s"] = round(time.perf_counter() - t0, 3)
    model = place_model(models.build(cfg.model, data.num_classes), device)
    summary["params"] = models.param_counts(model)
    log.info("%s: %s parameters, %d train / %d val / %d test images on %s", cfg.model.name,
             f"{summary['params']['total']:,}", len(data.train),
             len(data.val) if data.val is not None else 0, len(data.test), device)
    return data, model


def train(cfg: DictConfig, folder: RunFolder, data: dataset.Data, model: nn.Module,
          plan: GraphPlan, summary: dict, trackers: Trackers,
          on_epoch: Callable[[EpochEnd, Training], None] | None = None) -> Training:
    """fit, continuing from last.pt when resuming; every epoch is appended to metrics.jsonl,
    handed to on_epoch, saved in last.pt, sent to the trackers and logged as it ends.
    Returns the Training (its records and early stopping; the model holds the weights the
    run keeps)."""
    state = load_training_state(folder.last) if cfg.get("resume") else None
    done = (state or {}).get("records", [])
    # metrics.jsonl restarts from what last.pt knows: an epoch appended after the
    # last checkpoint is trained again, so the file matches an uninterrupted run.
    run_folder.write_text(folder.metrics, "".join(json.dumps(r) + "\n" for r in done))
    if state:
        log.info("resuming %s after epoch %d", folder.shown, state["epoch"])
    t0 = time.perf_counter()
    training = Training(model, data, cfg, plan, resume=state)  # may refuse: no event file yet
    trackers.start_training(first_epoch=len(done) + 1)
    with StopOnSignal() as stop:
        try:
            with closing(fit(training, stop)) as epochs:
                for epoch in epochs:
                    summary.update(epoch.train_path)
                    run_folder.append_jsonl(folder.metrics, epoch.record)
                    if on_epoch is not None:  # before last.pt: a resume repeats it
                        on_epoch(epoch, training)
                    run_folder.save_torch(folder.last, {**epoch.state, **run_identity(cfg, data)})
                    trackers.epoch(epoch.record)
                    log.info(format_epoch(epoch.record, cfg.trainer.epochs))
                    if epoch.early_stop:
                        log.info(epoch.early_stop)
        except Interrupted as e:
            e.signum = stop.signum or e.signum
            raise
    summary["train_time_s"] = round(time.perf_counter() - t0, 3)
    return training


def finish(cfg: DictConfig, folder: RunFolder, data: dataset.Data, training: Training,
           summary: dict) -> None:
    """The kept weights on the test set, predictions.csv, model.pt, the report and the
    completed summary.json; last.pt goes."""
    write_result(cfg, folder, data, training.model, training.records, training.stopper,
                 training.loss_fn, summary)
    # model.pt holds the kept weights; the resume state is no longer needed.
    folder.last.unlink(missing_ok=True)


def write_result(cfg: DictConfig, folder: RunFolder, data: dataset.Data, model: nn.Module,
                 records: list[dict], stopper: EarlyStopping, loss_fn, summary: dict) -> None:
    """What a completed run leaves in folder, from the weights it keeps and its epochs: the
    test set's scores, predictions.csv, model.pt, the report and summary.json."""
    test_loss, test_acc, logits = evaluate(model, data.test, data, loss_fn,
                                           cfg.trainer.eval_batch_size, cfg.trainer.precision)
    write_predictions(folder.predictions, data.test.labels, logits)
    save_checkpoint(folder.model, model, cfg, data)
    summary.update({f"final/{k}": v for k, v in records[-1].items()
                    if k in ("train/loss", "train/acc", "val/loss", "val/acc")})
    summary.update({"test/loss": test_loss, "test/acc": test_acc, "epochs": len(records),
                    **stopper.summary(cfg.trainer.epochs, len(records)),
                    "status": "completed", "finished": run_folder.utc_now()})
    t0 = time.perf_counter()
    summary.update(run_report.write_run_files(folder.path, cfg, model, data, summary))
    summary["report_time_s"] = round(time.perf_counter() - t0, 3)
    run_folder.write_json(folder.summary, summary)
    log.info("test/loss %s  test/acc %s  (%d epochs, %ss training)  -> %s",
             amount(test_loss, "loss"), pct(test_acc), len(records),
             amount(summary["train_time_s"], "time"), folder.shown)
    log.info("training step: %s", describe_path(summary))
    log_class_findings(summary)


def record_end(error: BaseException, folder: RunFolder, summary: dict) -> None:
    """summary.json of a run that did not complete: diverged, interrupted (with the command
    that continues it) or failed. When even that write fails, the error in flight matters
    more."""
    if isinstance(error, Diverged):
        summary.update(status="diverged", error=str(error), epoch=error.epoch,
                       batch=error.batch, lr=error.lr)
    elif isinstance(error, Interrupted):
        resume = f"python -m mnistcnn train resume={folder.shown}"
        summary.update(status="interrupted", error=str(error), epoch=error.epoch,
                       batch=error.batch, resume=resume)
        log.warning("interrupted; continue with: %s", resume)
    else:
        summary.update(status="failed", error=str(error) or type(error).__name__)
    summary["finished"] = run_folder.utc_now()
    try:
        run_folder.write_json(folder.summary, summary)
    except (OSError, UserError):
        log.error("could not write %s", folder.summary)
