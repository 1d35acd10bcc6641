"""predictions.csv, a run's test predictions: written once the test set is scored (by
training, and again by `evaluate`) and read back by the run report, which derives every
per-class number and the error gallery from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistcnn.base import run_folder


@dataclass
class Predictions:
    labels: np.ndarray
    preds: np.ndarray
    confidence: np.ndarray  # the predicted class's softmax probability


def write_predictions(path: Path, labels: torch.Tensor, logits: torch.Tensor) -> None:
    """One row per test image, in the test set's order: its label, the predicted class
    and that class's probability."""
    probs = torch.softmax(logits.float(), dim=1)
    conf, pred = probs.max(dim=1)
    rows = zip(labels.tolist(), pred.tolist(), conf.tolist(), strict=True)
    run_folder.write_csv(path, ["index", "label", "pred", "confidence"],
                         ([i, y, p, f"{c:.6f}"] for i, (y, p, c) in enumerate(rows)))


def read_predictions(path: Path) -> Predictions:
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return Predictions(labels=table[:, 1].astype(int), preds=table[:, 2].astype(int),
                       confidence=table[:, 3])
