"""One training run in its folder: config -> data -> model -> fit -> the run's files.

Everything written here is derived from the config and the training itself,
so `evaluate` can rebuild the evaluation files later from model.pt alone.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mnistcnn import data as data_mod
from mnistcnn import files, mlflowlog, models, provenance, report, tblog
from mnistcnn.config import choice, saved_config, to_plain, validate
from mnistcnn.engine import evaluate, fit, predict
from mnistcnn.errors import Diverged, Interrupted, UserError
from mnistcnn.graphed import describe_path
from mnistcnn.pages import amount, pct
from mnistcnn.stopping import EarlyStopping
from mnistcnn.training_setup import (
    graph_off_reason,
    make_loss,
    place_model,
    resolve_device,
    seed_everything,
)

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def format_epoch(r: dict, epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}", f"train/loss {amount(r['train/loss'], 'loss')}",
             f"train/acc {pct(r['train/acc'])}"]
    if "val/acc" in r:
        parts += [f"val/loss {amount(r['val/loss'], 'loss')}", f"val/acc {pct(r['val/acc'])}"]
    parts += [f"lr {r['lr']:.2g}", f"{amount(r['epoch_time_s'], 'time')}s"]
    return "  ".join(parts)


def write_predictions(path: Path, labels: torch.Tensor, logits: torch.Tensor) -> None:
    probs = torch.softmax(logits.float(), dim=1)
    conf, pred = probs.max(dim=1)
    rows = zip(labels.tolist(), pred.tolist(), conf.tolist(), strict=True)
    files.write_csv(path, ["index", "label", "pred", "confidence"],
                    ([i, y, p, f"{c:.6f}"] for i, (y, p, c) in enumerate(rows)))


class StopOnSignal:
    """SIGINT/SIGTERM ask the loop to stop after the batch in flight; a second signal
    stops at once (every file is written atomically, so nothing already written is
    damaged). Handlers can only be set in the main thread; elsewhere this does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, _frame) -> None:
        if self.signum is not None:
            raise Interrupted(0, -1, signum)
        self.signum = signum
        log.warning("%s: stopping after this batch (again to stop at once)",
                    signal.Signals(signum).name)

    def __call__(self) -> bool:
        return self.signum is not None


def train_run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train as configured, writing metrics.jsonl, last.pt (every epoch), summary.json,
    predictions.csv, model.pt and the report into run_dir. Returns the summary; its
    `status` says how the run ended. With cfg.resume, a completed run is returned as it
    is and an interrupted one continues from its last.pt."""
    run_dir = Path(run_dir)
    shown = os.path.relpath(run_dir)  # as seen from where the command ran: no machine paths
    summary_path = run_dir / "summary.json"
    last_path = run_dir / "last.pt"
    if cfg.get("resume") and summary_path.is_file():
        previous = files.read_json(summary_path)
        if previous.get("status") == "completed":
            log.info("%s already completed (test/acc %s); skipped", shown,
                     pct(previous["test/acc"]))
            return previous
    summary = {"status": "running", "model": cfg.model.name, "seed": cfg.seed,
               "started": _now(), **provenance.record()}
    ml = None
    try:
        validate(cfg)
        tblog.check_available(cfg)
        mlflowlog.check_available(cfg)
        device = resolve_device(cfg.trainer.device)
        graph_off_reason(cfg, device)  # trainer.cuda_graph=true that cannot be: fail before data
        summary["device"] = str(device)
        files.write_json(summary_path, summary)
        ml = mlflowlog.open_log(cfg, run_dir)
        seed_everything(cfg.seed, cfg.trainer.deterministic)
        t0 = time.perf_counter()
        data = data_mod.load(cfg.data, device, cfg.seed)
        summary["data_load_s"] = round(time.perf_counter() - t0, 3)
        model = place_model(models.build(cfg.model, data.num_classes), device)
        summary["params"] = models.param_counts(model)
        log.info("%s: %s parameters, %d train / %d val / %d test images on %s", cfg.model.name,
                 f"{summary['params']['total']:,}", len(data.train),
                 len(data.val) if data.val is not None else 0, len(data.test), device)

        state = load_training_state(last_path) if cfg.get("resume") else None
        metrics_path = run_dir / "metrics.jsonl"
        # metrics.jsonl restarts from what last.pt knows: an epoch appended after the
        # last checkpoint is trained again, so the file matches an uninterrupted run.
        files.write_text(metrics_path, "".join(json.dumps(r) + "\n"
                                               for r in (state or {}).get("records", [])))
        if state:
            log.info("resuming %s after epoch %d", run_dir, state["epoch"])
        epochs = cfg.trainer.epochs
        stopper = EarlyStopping.from_config(cfg.trainer)
        tb = tblog.open_log(cfg, run_dir, first_epoch=len((state or {}).get("records", [])) + 1)

        def on_epoch(record: dict, training) -> None:
            summary.update(training.path())
            files.append_jsonl(metrics_path, record)
            files.save_torch(last_path, {**training.state(), **run_identity(cfg, data)})
            if tb is not None:
                tb.epoch(record)
            if ml is not None:
                ml.epoch(record)
            log.info(format_epoch(record, epochs))
            if stopper.stopped:
                log.info(stopper.describe())

        t0 = time.perf_counter()
        with StopOnSignal() as stop:
            try:
                records = fit(model, data, cfg, on_epoch, resume=state, stop=stop,
                              stopper=stopper)
            except Interrupted as e:
                e.signum = stop.signum or e.signum
                raise
        summary["train_time_s"] = round(time.perf_counter() - t0, 3)
        if choice(cfg.trainer.keep) == "best":
            model.load_state_dict(stopper.best_weights)

        test_loss, test_acc, logits = evaluate(model, data.test, data,
                                               make_loss(cfg.loss, data.num_classes),
                                               cfg.trainer.eval_batch_size,
                                               cfg.trainer.precision)
        write_predictions(run_dir / "predictions.csv", data.test.labels, logits)
        save_checkpoint(run_dir / "model.pt", model, cfg, data)
        last = records[-1]
        summary.update({f"final/{k}": v for k, v in last.items()
                        if k in ("train/loss", "train/acc", "val/loss", "val/acc")})
        summary.update({"test/loss": test_loss, "test/acc": test_acc, "epochs": len(records),
                        **stopper.summary(epochs, len(records)),
                        "status": "completed", "finished": _now()})
        t0 = time.perf_counter()
        summary.update(report.write_run_files(run_dir, cfg, model, data, summary))
        summary["report_time_s"] = round(time.perf_counter() - t0, 3)
        files.write_json(summary_path, summary)
        if tb is not None:
            tb.finish(cfg, summary)
        mlflowlog.close(ml, summary)
        # model.pt holds the kept weights; the resume state is no longer needed.
        last_path.unlink(missing_ok=True)
        log.info("test/loss %s  test/acc %s  (%d epochs, %ss training)  -> %s",
                 amount(test_loss, "loss"), pct(test_acc), len(records),
                 amount(summary["train_time_s"], "time"), shown)
        log.info("training step: %s", describe_path(summary))
        log_class_findings(summary)
        return summary
    except Diverged as e:
        end_summary(summary_path, summary, status="diverged", error=str(e), epoch=e.epoch,
                    batch=e.batch, lr=e.lr)
        mlflowlog.close(ml, summary)
        raise UserError(str(e)) from e
    except Interrupted as e:
        end_summary(summary_path, summary, status="interrupted", error=str(e),
                    epoch=e.epoch, batch=e.batch, resume=f"python -m mnistcnn train "
                    f"resume={shown}")
        mlflowlog.close(ml, summary)
        log.warning("interrupted; continue with: python -m mnistcnn train resume=%s", shown)
        raise
    except BaseException as e:
        end_summary(summary_path, summary, status="failed", error=str(e) or type(e).__name__)
        mlflowlog.close(ml, summary)
        raise


def resume_run(run_dir: str | Path) -> dict:
    """`train resume=PATH`: continue a run in its own folder with its saved config."""
    run_dir = Path(run_dir)
    state_path, config_path = run_dir / "last.pt", run_dir / ".hydra" / "config.yaml"
    if state_path.is_file():
        cfg = saved_config(safe_load(state_path, "an mnistcnn resume checkpoint")["config"])
    elif config_path.is_file():  # stopped before its first epoch ended: start it again
        cfg = saved_config(OmegaConf.load(config_path))
    else:
        raise UserError(f"{run_dir} is not a run folder (no last.pt or .hydra/config.yaml); "
                        f"pass resume=PATH of a folder written by `train`")
    cfg.resume = True
    return train_run(cfg, run_dir)


def end_summary(path: Path, summary: dict, **fields) -> None:
    """Record how a run ended; when even that write fails, the error in flight matters more."""
    summary.update(fields, finished=_now())
    try:
        files.write_json(path, summary)
    except (OSError, UserError):
        log.error("could not write %s", path)


# ----------------------------------------------------------------------------- checkpoints
def run_identity(cfg: DictConfig, data: data_mod.Data) -> dict:
    """What a checkpoint needs besides weights to be used alone: config and normalisation."""
    return {"config": to_plain(cfg), "class_names": data.class_names,
            "mean": data.mean, "std": data.std}


def save_checkpoint(path: Path, model: torch.nn.Module, cfg: DictConfig,
                    data: data_mod.Data) -> None:
    """Plain dict of tensors and primitives: loadable with torch.load(weights_only=True)."""
    files.save_torch(path, {"model": {k: v.detach().cpu() for k, v in
                                      model.state_dict().items()},
                            **run_identity(cfg, data)})


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
    path = run_dir / "model.pt"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished run (no model.pt); "
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
        raise UserError(f"{run_dir / 'model.pt'} does not match its config's model "
                        f"({cfg.model.name}); the checkpoint is from a different model") from e
    return model, cfg, ckpt


def evaluate_run(run_dir: str | Path, device_name: str = "auto") -> dict:
    """Re-evaluate a finished run on its test set from model.pt and its saved config."""
    run_dir = Path(run_dir)
    device = resolve_device(device_name)
    model, cfg, ckpt = load_run_model(run_dir, device)
    data = data_mod.load(cfg.data, device, cfg.seed)
    data = dataclasses.replace(data, mean=ckpt["mean"], std=ckpt["std"])
    loss, acc, logits = evaluate(model, data.test, data, make_loss(cfg.loss, data.num_classes),
                                 cfg.trainer.eval_batch_size, cfg.trainer.precision)
    write_predictions(run_dir / "predictions.csv", data.test.labels, logits)
    result = {"test/loss": loss, "test/acc": acc, "test_size": len(data.test),
              "device": str(device), "evaluated": _now()}
    summary_path = run_dir / "summary.json"
    summary = files.read_json(summary_path) if summary_path.is_file() else {}
    # The report shows this evaluation; summary.json keeps its training-time test numbers
    # and only gains the per-class keys, so runs from before the report have them too.
    keys = report.write_run_files(run_dir, cfg, model, data, {**summary, **result})
    result.update(keys)
    files.write_json(run_dir / "evaluation.json", result)
    if summary:
        files.write_json(summary_path, {**summary, **keys})
    log_class_findings(result)
    return result


def classify(run_dir: str | Path, paths: list[Path], images: np.ndarray,
             device_name: str = "auto") -> list[dict]:
    """Per digit (uint8 [N, 28, 28], read from `paths`) by a finished run's model.pt,
    normalised as its training data was: file, predicted class name, its probability and
    the top 3 as (class name, probability)."""
    device = resolve_device(device_name)
    model, cfg, ckpt = load_run_model(Path(run_dir), device)
    split = data_mod.Split(torch.from_numpy(images).unsqueeze(1).to(device),
                           torch.zeros(len(images), dtype=torch.int64, device=device))
    # engine.predict reads only the normalisation from a Data; the digits are its test split.
    data = data_mod.Data(train=split, val=None, test=split, class_names=ckpt["class_names"],
                         mean=ckpt["mean"], std=ckpt["std"])
    logits = predict(model, split, data, cfg.trainer.eval_batch_size, cfg.trainer.precision)
    names = data.class_names
    values, indices = torch.softmax(logits, dim=1).topk(min(3, len(names)), dim=1)
    return [{"file": str(path), "pred": names[idx[0]], "confidence": p[0],
             "top": [(names[i], v) for i, v in zip(idx, p, strict=True)]}
            for path, p, idx in zip(paths, values.tolist(), indices.tolist(), strict=True)]


def write_image_predictions(path: Path, rows: list[dict]) -> None:
    """`predict --out`: one CSV row per image with its top 3 classes."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "pred", "confidence", "top2", "top2_confidence", "top3",
                     "top3_confidence"])
    for row in rows:
        rest = [x for name, p in row["top"][1:] for x in (name, f"{p:.6f}")]
        writer.writerow([row["file"], row["pred"], f"{row['confidence']:.6f}", *rest])
    files.write_text(path, buf.getvalue())


def log_class_findings(summary: dict) -> None:
    """The per-class lines of the console summary: averages, worst class, never-predicted."""
    log.info("test/macro_recall %s  test/macro_f1 %s  worst class %s (recall %s)",
             pct(summary["test/macro_recall"]), pct(summary["test/macro_f1"]),
             summary["test/worst_class"], pct(summary["test/worst_class_recall"]))
    never = summary["test/never_predicted"]
    if never:
        which = f"class {never[0]} is" if len(never) == 1 else f"classes {', '.join(never)} are"
        log.warning("%s never predicted on the test set: their test images all go to "
                    "other classes (see confusion.csv, report.html)", which)
