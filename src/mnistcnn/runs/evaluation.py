"""What a finished run's model.pt does after training: `evaluate` (the test set again, with
its predictions, report and evaluation.json) and `predict` (a person's digit images, and
the CSV of their predictions).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from mnistcnn.base import run_folder
from mnistcnn.base.run_folder import RunFolder
from mnistcnn.data import dataset
from mnistcnn.reporting import run_report
from mnistcnn.reporting.predictions import write_predictions
from mnistcnn.runs.console import log_class_findings
from mnistcnn.training.checkpoints import load_run_model
from mnistcnn.training.device import resolve_device
from mnistcnn.training.engine import evaluate, predict
from mnistcnn.training.factories import make_loss


def evaluate_run(run_dir: str | Path, device_name: str = "auto") -> dict:
    """Re-evaluate a finished run on its test set from model.pt and its saved config."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    device = resolve_device(device_name)
    model, cfg, ckpt = load_run_model(run_dir, device)
    data = dataset.load(cfg.data, device, cfg.seed)
    data = dataclasses.replace(data, mean=ckpt["mean"], std=ckpt["std"])
    loss, acc, logits = evaluate(model, data.test, data, make_loss(cfg.loss, data.num_classes),
                                 cfg.trainer.eval_batch_size, cfg.trainer.precision)
    write_predictions(folder.predictions, data.test.labels, logits)
    result = {"test/loss": loss, "test/acc": acc, "test_size": len(data.test),
              "device": str(device), "evaluated": run_folder.utc_now()}
    summary = run_folder.read_json(folder.summary) if folder.summary.is_file() else {}
    # The report shows this evaluation; summary.json keeps its training-time test numbers
    # and only gains the per-class keys, so runs from before the report have them too.
    keys = run_report.write_run_files(run_dir, cfg, model, data, {**summary, **result})
    result.update(keys)
    run_folder.write_json(folder.evaluation, result)
    if summary:
        run_folder.write_json(folder.summary, {**summary, **keys})
    log_class_findings(result)
    return result


@dataclasses.dataclass(frozen=True)
class RunModel:
    """A finished run's model.pt, loaded on its device for `predict`."""

    run_dir: Path
    model: torch.nn.Module
    cfg: DictConfig
    ckpt: dict
    device: torch.device


def open_run(run_dir: str | Path, device_name: str = "auto") -> RunModel:
    """The device, then the run's model.pt and config: a one-line UserError for either,
    before any image is read."""
    device = resolve_device(device_name)
    model, cfg, ckpt = load_run_model(Path(run_dir), device)
    return RunModel(Path(run_dir), model, cfg, ckpt, device)


def classify(run: RunModel, paths: list[Path], images: np.ndarray) -> list[dict]:
    """Per digit (uint8 [N, 28, 28], read from `paths`) by a finished run's model.pt,
    normalised as its training data was: file, predicted class name, its probability and
    the top 3 as (class name, probability)."""
    device, ckpt = run.device, run.ckpt
    split = dataset.Split(torch.from_numpy(images).unsqueeze(1).to(device),
                           torch.zeros(len(images), dtype=torch.int64, device=device))
    # engine.predict reads only the normalisation from a Data; the digits are its test split.
    data = dataset.Data(train=split, val=None, test=split, class_names=ckpt["class_names"],
                         mean=ckpt["mean"], std=ckpt["std"])
    logits = predict(run.model, split, data, run.cfg.trainer.eval_batch_size,
                     run.cfg.trainer.precision)
    names = data.class_names
    values, indices = torch.softmax(logits, dim=1).topk(min(3, len(names)), dim=1)
    return [{"file": str(path), "pred": names[idx[0]], "confidence": p[0],
             "top": [(names[i], v) for i, v in zip(idx, p, strict=True)]}
            for path, p, idx in zip(paths, values.tolist(), indices.tolist(), strict=True)]


def write_image_predictions(path: Path, rows: list[dict]) -> None:
    """`predict --out`: one CSV row per image with its top 3 classes."""
    run_folder.write_csv(path, ["file", "pred", "confidence", "top2", "top2_confidence", "top3",
                                "top3_confidence"],
                         ([row["file"], row["pred"], f"{row['confidence']:.6f}",
                           *(x for name, p in row["top"][1:] for x in (name, f"{p:.6f}"))]
                          for row in rows))
