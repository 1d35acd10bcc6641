"""One training run in its folder: config -> data -> model -> fit -> the run's files.

Everything written here is derived from the config and the training itself,
so `evaluate` can rebuild the evaluation files later from model.pt alone.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mnistcnn import data as data_mod
from mnistcnn import files, models, report
from mnistcnn.config import to_plain, validate
from mnistcnn.engine import Diverged, evaluate, fit, make_loss, resolve_device, seed_everything
from mnistcnn.errors import UserError

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def format_epoch(r: dict, epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}", f"train/loss {r['train/loss']:.4f}",
             f"train/acc {100 * r['train/acc']:.2f}%"]
    if "val/acc" in r:
        parts += [f"val/loss {r['val/loss']:.4f}", f"val/acc {100 * r['val/acc']:.2f}%"]
    parts += [f"lr {r['lr']:.2g}", f"{r['epoch_time_s']:.1f}s"]
    return "  ".join(parts)


def write_predictions(path: Path, labels: torch.Tensor, logits: torch.Tensor) -> None:
    probs = torch.softmax(logits.float(), dim=1)
    conf, pred = probs.max(dim=1)
    rows = zip(labels.tolist(), pred.tolist(), conf.tolist(), strict=True)
    lines = ["index,label,pred,confidence"]
    lines += [f"{i},{y},{p},{c:.6f}" for i, (y, p, c) in enumerate(rows)]
    files.write_text(path, "\n".join(lines) + "\n")


def train_run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train as configured, writing metrics.jsonl, summary.json, predictions.csv and model.pt
    into run_dir. Returns the summary; its `status` says how the run ended."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    summary = {"status": "running", "model": cfg.model.name, "seed": cfg.seed,
               "started": _now(), "torch": torch.__version__, "host": platform.node()}
    try:
        validate(cfg)
        report.check_settings(report.report_settings(cfg))
        device = resolve_device(cfg.trainer.device)
        summary["device"] = str(device)
        files.write_json(summary_path, summary)
        seed_everything(cfg.seed, cfg.trainer.deterministic)
        t0 = time.perf_counter()
        data = data_mod.load(cfg.data, device, cfg.seed)
        summary["data_load_s"] = round(time.perf_counter() - t0, 3)
        model = models.build(cfg.model, data.num_classes).to(device)
        summary["params"] = models.param_counts(model)
        log.info("%s: %s parameters, %d train / %d val / %d test images on %s", cfg.model.name,
                 f"{summary['params']['total']:,}", len(data.train),
                 len(data.val) if data.val is not None else 0, len(data.test), device)

        metrics_path = run_dir / "metrics.jsonl"
        metrics_path.write_text("")
        epochs = cfg.trainer.epochs

        def on_epoch(record: dict, _training) -> None:
            files.append_jsonl(metrics_path, record)
            log.info(format_epoch(record, epochs))

        t0 = time.perf_counter()
        records = fit(model, data, cfg, on_epoch)
        summary["train_time_s"] = round(time.perf_counter() - t0, 3)

        test_loss, test_acc, logits = evaluate(model, data.test, data,
                                               make_loss(cfg.loss, data.num_classes),
                                               cfg.trainer.eval_batch_size)
        write_predictions(run_dir / "predictions.csv", data.test.labels, logits)
        save_checkpoint(run_dir / "model.pt", model, cfg, data)
        last = records[-1]
        summary.update({f"final/{k}": v for k, v in last.items()
                        if k in ("train/loss", "train/acc", "val/loss", "val/acc")})
        summary.update({"test/loss": test_loss, "test/acc": test_acc, "epochs": len(records),
                        "status": "completed", "finished": _now()})
        t0 = time.perf_counter()
        summary.update(report.write_run_files(run_dir, cfg, model, data, summary))
        summary["report_time_s"] = round(time.perf_counter() - t0, 3)
        files.write_json(summary_path, summary)
        log.info("test/loss %.4f  test/acc %.2f%%  (%d epochs, %.1fs training)  -> %s",
                 test_loss, 100 * test_acc, len(records), summary["train_time_s"], run_dir)
        log_class_findings(summary)
        return summary
    except Diverged as e:
        summary.update({"status": "diverged", "error": str(e), "epoch": e.epoch,
                        "batch": e.batch, "lr": e.lr})
        files.write_json(summary_path, summary)
        raise UserError(str(e)) from e
    except BaseException as e:
        summary.update({"status": "failed", "error": str(e) or type(e).__name__,
                        "finished": _now()})
        files.write_json(summary_path, summary)
        raise


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model: torch.nn.Module, cfg: DictConfig,
                    data: data_mod.Data) -> None:
    """Plain dict of tensors and primitives: loadable with torch.load(weights_only=True)."""
    files.save_torch(path, {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": to_plain(cfg),
        "class_names": data.class_names,
        "mean": data.mean,
        "std": data.std,
    })


def load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / "model.pt"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished run (no model.pt); "
                        f"pass run=PATH of a folder written by `train`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an untrusted pickle or a damaged file: never run its code
        raise UserError(f"{path} cannot be loaded safely ({type(e).__name__}); "
                        f"it is damaged or not an mnistcnn checkpoint") from e
    if not isinstance(ckpt, dict) or not {"model", "config"} <= ckpt.keys():
        raise UserError(f"{path} is not an mnistcnn checkpoint; pass a run folder from `train`")
    return ckpt


def evaluate_run(run_dir: str | Path, device_name: str = "auto") -> dict:
    """Re-evaluate a finished run on its test set from model.pt and its saved config."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    cfg = OmegaConf.create(ckpt["config"])
    device = resolve_device(device_name)
    data = data_mod.load(cfg.data, device, cfg.seed)
    data = dataclasses.replace(data, mean=ckpt["mean"], std=ckpt["std"])
    model = models.build(cfg.model, len(ckpt["class_names"])).to(device)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{run_dir / 'model.pt'} does not match its config's model "
                        f"({cfg.model.name}); the checkpoint is from a different model") from e
    loss, acc, logits = evaluate(model, data.test, data, make_loss(cfg.loss, data.num_classes),
                                 cfg.trainer.eval_batch_size)
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


def log_class_findings(summary: dict) -> None:
    """The per-class lines of the console summary: averages, worst class, never-predicted."""
    log.info("test/macro_recall %.2f%%  test/macro_f1 %.2f%%  worst class %s (recall %.2f%%)",
             100 * summary["test/macro_recall"], 100 * summary["test/macro_f1"],
             summary["test/worst_class"], 100 * summary["test/worst_class_recall"])
    never = summary["test/never_predicted"]
    if never:
        which = f"class {never[0]} is" if len(never) == 1 else f"classes {', '.join(never)} are"
        log.warning("%s never predicted on the test set: their test images all go to "
                    "other classes (see confusion.csv, report.html)", which)
