"""The run report's nine figures (FIGURES), each drawn from a RunView, which holds
everything a run's figures and its report page are drawn from.

A figure maker picks its numbers and arrays from the view (with probes.py for what needs
the model), titles them with the run's label and hands them to a drawing function of
plots.py. A figure that does not apply to a run (no conv layer, no validation split, no
misclassified digit, ...) raises Skipped, whose message becomes its note in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import nn

from mnistcnn.base.config import choice
from mnistcnn.base.formats import amount, pct
from mnistcnn.base.run_folder import METRICS
from mnistcnn.data.dataset import Data
from mnistcnn.reporting import metrics, plots, probes
from mnistcnn.reporting.predictions import Predictions

ERRORS_SHOWN = 32  # the most confident mistakes: 4 rows of the gallery
CORRECT_PER_CLASS = 10
MIN_TSNE_POINTS = 10  # below this t-SNE's neighbourhoods say nothing


class Skipped(Exception):
    """A figure that does not apply to this run; the message becomes its note in the report."""


@dataclass
class RunView:
    """Everything a run's figures and its report page are drawn from."""

    cfg: DictConfig
    settings: DictConfig  # cfg.report with defaults filled in
    label: str  # model, changed knobs and training settings: the first line of every title
    model: nn.Module
    data: Data
    records: list[dict]
    predictions: Predictions
    confusion: np.ndarray
    rows: list[dict]  # metrics.per_class
    summary: dict


def _run_curves(view: RunView, metric: str, what: str) -> Figure:
    if not view.records:
        raise Skipped(f"{METRICS} holds no epoch")
    test = (metrics.accuracy(view.predictions.labels, view.predictions.preds) if metric == "acc"
            else view.summary.get("test/loss"))
    shown = pct(test) if metric == "acc" else amount(test, "loss")
    s = view.summary
    best = s.get("best_epoch")
    kept = best if choice(view.cfg.trainer.get("keep", "last")) == "best" else None
    model = f"model kept from epoch {kept}" if kept else "final model"
    title = f"{view.label}\n{what} per epoch; test/{metric} of the {model} {shown}"
    marks = {f"best {s['monitor']} (epoch {best})": best} if best else {}
    if s.get("stopped_early"):
        marks[f"stopped early (epoch {s['epochs']})"] = s["epochs"]
    return plots.curves(view.records, metric, test, title, marks, kept)


def _run_confusion(view: RunView) -> Figure:
    acc = metrics.accuracy(view.predictions.labels, view.predictions.preds)
    title = (f"{view.label}\nconfusion matrix on {len(view.predictions.labels):,} test images; "
             f"test/acc {pct(acc)}")
    return plots.confusion(view.confusion, view.data.class_names, title)


def _run_errors(view: RunView) -> Figure:
    p, names = view.predictions, view.data.class_names
    wrong = np.flatnonzero(p.labels != p.preds)
    if not len(wrong):
        raise Skipped("no misclassified test image")
    shown = wrong[np.argsort(-p.confidence[wrong], kind="stable")][:ERRORS_SHOWN]
    captions = [f"{names[p.labels[i]]}→{names[p.preds[i]]} ({pct(p.confidence[i], 1)})"
                for i in shown]
    title = (f"{view.label}\nthe {len(shown)} most confident of {len(wrong):,} misclassified "
             f"test digits: true→predicted (confidence)")
    return plots.gallery(_test_images(view.data, shown), captions, title)


def _run_correct(view: RunView) -> Figure:
    p, names = view.predictions, view.data.class_names
    rows = []
    for c, name in enumerate(names):
        support = int((p.labels == c).sum())
        if support:
            right = np.flatnonzero((p.labels == c) & (p.preds == c))
            rows.append((f"{name}\n{len(right)}/{support}",
                         _test_images(view.data, right[:CORRECT_PER_CLASS])))
    title = (f"{view.label}\ncorrectly classified test digits: the first {CORRECT_PER_CLASS} "
             f"of each class (left: class, correct/total)")
    return plots.class_gallery(rows, CORRECT_PER_CLASS, title)


def _run_filters(view: RunView, which: str) -> Figure:
    convs = probes.conv_layers(view.model)
    if not convs:
        raise Skipped(f"model {view.cfg.model.name} has no conv layer")
    if which == "first":
        name, conv = convs[0]
    else:
        # A 1x1 (pointwise) conv has no spatial pattern to look at: take the last larger one.
        spatial = [c for c in convs if max(c[1].kernel_size) > 1]
        name, conv = (spatial or convs)[-1]
    tiles, how = probes.filter_tiles(conv)
    kh, kw = conv.kernel_size
    title = (f"{view.label}\n{which} conv layer {name}: {len(tiles)} filters {kh}×{kw} "
             f"({how}); grey-scale, each tile scaled to its own range")
    return plots.filters(tiles, title)


def _run_feature_maps(view: RunView) -> Figure:
    if not probes.conv_layers(view.model):
        raise Skipped(f"model {view.cfg.model.name} has no conv layer")
    i, n = view.settings.sample_index, len(view.data.test)
    if i >= n:
        raise Skipped(f"report.sample_index={i} is beyond the test set ({n:,} images)")
    names, p = view.data.class_names, view.predictions
    title = (f"{view.label}\nfeature maps of test image {i} (true {names[p.labels[i]]}, "
             f"predicted {names[p.preds[i]]}): each conv/pool stage, each map scaled to its "
             f"own range")
    return plots.feature_maps(probes.stage_outputs(view.model, view.data, i), title)


def _run_embedding(view: RunView) -> Figure:
    test, seed = view.data.test, view.cfg.seed
    n = min(view.settings.tsne_samples, len(test))
    # A seeded sample rather than the first n: the test file's order is not random.
    idx = np.sort(np.random.default_rng(seed).permutation(len(test))[:n])
    picked = torch.as_tensor(idx, device=test.images.device)
    layer = view.model.embedding
    features = probes.layer_outputs(view.model, layer, test.images[picked], view.data,
                                    view.cfg.trainer.eval_batch_size)
    width = features.shape[1]
    if width == 2:
        points, axis, method = features, "feature", "raw 2-D features (no t-SNE)"
    elif n < MIN_TSNE_POINTS:
        raise Skipped(f"t-SNE needs at least {MIN_TSNE_POINTS} test images, got {n}")
    else:
        points, axis, method = probes.tsne(features, seed), "t-SNE", "t-SNE"
    title = f"{view.label}\n{method} of {layer} ({width} units) for {n:,} test images"
    return plots.embedding(points, test.labels[picked].cpu().numpy(), view.data.class_names,
                           axis, title)


def _test_images(data: Data, idx: np.ndarray) -> np.ndarray:
    rows = torch.as_tensor(idx, dtype=torch.long, device=data.test.images.device)
    return data.test.images[rows, 0].cpu().numpy()


# Plot name -> figure maker. The names are config.REPORT_PLOTS (what report.plots accepts,
# checked before a run starts; base cannot import this module), in the same order:
# tests/test_report.py checks that the two say the same.
FIGURES: dict[str, Callable[[RunView], Figure]] = {
    "loss": lambda v: _run_curves(v, "loss", "loss"),
    "accuracy": lambda v: _run_curves(v, "acc", "accuracy"),
    "confusion": _run_confusion,
    "errors": _run_errors,
    "correct": _run_correct,
    "filters_first": lambda v: _run_filters(v, "first"),
    "filters_last": lambda v: _run_filters(v, "last"),
    "feature_maps": _run_feature_maps,
    "embedding": _run_embedding,
}
