"""The run report: the files a finished run explains itself with, and report.html.

`write_run_files` is the one entry point, called by `train` once model.pt is saved
and by `evaluate` once the test set is predicted again. Every number comes from
the run folder (predictions.csv, metrics.jsonl, the summary) and every picture
from the trained model and the test images, so an old run can be re-reported.
A figure that does not apply to a run (no conv layer, no validation split, no
misclassified digit, ...) is skipped with a note in the report, never an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits
from torch import nn

from mnistcnn import files, metrics, models, pages, plots
from mnistcnn.config import MODEL_SCHEMAS, ReportConfig, choice, to_plain
from mnistcnn.data import Data, prepare
from mnistcnn.errors import UserError
from mnistcnn.pages import esc, number, pct, section

ERRORS_SHOWN = 32  # the most confident mistakes: 4 rows of the gallery
CORRECT_PER_CLASS = 10
MIN_TSNE_POINTS = 10  # below this t-SNE's neighbourhoods say nothing
# The layout is settled after 250 early-exaggeration + 250 further iterations; scikit-learn's
# default 1000 doubles the cost for a picture that barely changes.
TSNE_ITERATIONS = 500


class Skipped(Exception):
    """A figure that does not apply to this run; the message becomes its note in the report."""


@dataclass
class Predictions:
    labels: np.ndarray
    preds: np.ndarray
    confidence: np.ndarray


@dataclass
class RunView:
    """Everything the figures and the page are drawn from."""

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


# ----------------------------------------------------------------------------- entry points
def check_settings(report_cfg: Any) -> None:
    """Reject report settings that would only fail after training."""
    unknown = sorted(set(report_cfg.plots or []) - set(FIGURES))
    if unknown:
        raise UserError(f"report.plots: unknown plot {', '.join(unknown)}; choose from "
                        f"{', '.join(FIGURES)}, e.g. report.plots=[loss,confusion]")
    if report_cfg.sample_index < 0:
        raise UserError(f"report.sample_index={report_cfg.sample_index} is out of range: "
                        f"must be >= 0 (a test image index)")
    if report_cfg.tsne_samples < 1:
        raise UserError(f"report.tsne_samples={report_cfg.tsne_samples} is out of range: "
                        f"must be >= 1, e.g. 2000")


def write_run_files(run_dir: str | Path, cfg: DictConfig, model: nn.Module, data: Data,
                    summary: dict) -> dict:
    """Write confusion.csv and classification.csv, and unless report.enabled=false the
    plots and report.html, into run_dir. Returns the keys summary.json gains."""
    run_dir = Path(run_dir)
    settings = report_settings(cfg)
    predictions = read_predictions(run_dir / "predictions.csv")
    names = data.class_names
    cm = metrics.confusion(predictions.labels, predictions.preds, len(names))
    rows = metrics.per_class(predictions.labels, predictions.preds, names)
    write_confusion_csv(run_dir / "confusion.csv", cm, names)
    write_classification_csv(run_dir / "classification.csv", rows)
    keys = metrics.summary_keys(rows, cm, names)
    if not settings.enabled:
        return keys
    metrics_path = run_dir / "metrics.jsonl"
    view = RunView(cfg=cfg, settings=settings, label=run_label(cfg), model=model, data=data,
                   records=files.read_jsonl(metrics_path) if metrics_path.is_file() else [],
                   predictions=predictions, confusion=cm, rows=rows,
                   summary={**summary, **keys})
    wanted = list(settings.plots) if settings.plots is not None else list(FIGURES)
    images, skipped = draw_figures(view, wanted, run_dir / "plots")
    files.write_text(run_dir / "report.html", build_html(view, images, skipped, run_dir.name))
    return keys


def report_settings(cfg: DictConfig) -> DictConfig:
    """cfg.report over the schema defaults: configs saved before a key existed still work."""
    return OmegaConf.merge(OmegaConf.structured(ReportConfig), cfg.get("report") or {})


def run_label(cfg: DictConfig) -> str:
    """Model with the knobs changed from its defaults, then the training settings."""
    model = to_plain(cfg.model)
    defaults = to_plain(OmegaConf.structured(MODEL_SCHEMAS[model["name"]]))
    knobs = [f"{k}={v}" for k, v in model.items() if k != "name" and v != defaults.get(k)]
    parts = [" ".join([model["name"], *knobs])]
    if choice(cfg.data.name) != "mnist":
        parts.append(choice(cfg.data.name))
    if cfg.data.classes:
        parts.append(f"{len(cfg.data.classes)} classes")
    parts += [f"{cfg.optim.name} lr={cfg.optim.lr:g}", f"batch {cfg.trainer.batch_size}",
              f"{cfg.trainer.epochs} epoch{'s' if cfg.trainer.epochs != 1 else ''}",
              f"seed {cfg.seed}"]
    return " · ".join(parts)


# ----------------------------------------------------------------------------- run files
def read_predictions(path: Path) -> Predictions:
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return Predictions(labels=table[:, 1].astype(int), preds=table[:, 2].astype(int),
                       confidence=table[:, 3])


def write_confusion_csv(path: Path, cm: np.ndarray, class_names: Sequence[str]) -> None:
    """Counts with true classes on rows and predicted classes on columns."""
    files.write_csv(path, ["true\\pred", *class_names],
                    ([name, *row] for name, row in zip(class_names, cm.tolist(), strict=True)))


def write_classification_csv(path: Path, rows: list[dict]) -> None:
    """Per-class rows then the averages; an undefined value is written as `nan`."""
    files.write_csv(path, metrics.COLUMNS, ([row[c] for c in metrics.COLUMNS] for row in rows))


def draw_figures(view: RunView, names: Sequence[str], folder: Path
                 ) -> tuple[dict[str, bytes], dict[str, str]]:
    """Draw each named figure into folder/NAME.png; returns PNG bytes and skip notes."""
    folder.mkdir(exist_ok=True)
    images, skipped = {}, {}
    for name in names:
        path = folder / f"{name}.png"
        try:
            fig = FIGURES[name](view)
        except Skipped as e:
            skipped[name] = str(e)
            # A figure left from an earlier report would contradict the note.
            path.unlink(missing_ok=True)
            continue
        images[name] = pages.save_png(path, fig)
    return images, skipped


# ----------------------------------------------------------------------------- model probes
def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every conv layer in forward order with its qualified name; depthwise ones included."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def filter_tiles(conv: nn.Conv2d) -> tuple[np.ndarray, str]:
    """One [kh, kw] tile per output filter, and how the tiles were made (for the title)."""
    weight = conv.weight.detach().float().cpu().numpy()
    inputs = weight.shape[1]  # input channels each filter sees (1 for a depthwise conv)
    if inputs == 1:
        how = "depthwise: one tile per channel" if conv.groups > 1 else "one input channel"
        return weight[:, 0], how
    return weight.mean(axis=1), f"each tile the mean over the filter's {inputs} input channels"


@torch.inference_mode()
def stage_outputs(model: nn.Module, data: Data, index: int) -> list[tuple[str, np.ndarray]]:
    """The raw input image and the output of every conv/pool stage for one test image."""
    raw = data.test.images[index: index + 1]
    model.eval()
    x = prepare(raw, data.mean, data.std)
    out = [("input", raw[0].float().cpu().numpy())]
    for name, stage in model.features.named_children():
        x = stage(x)
        out.append((name, x[0].float().cpu().numpy()))
    return out


@torch.inference_mode()
def layer_outputs(model: nn.Module, layer: str, images: torch.Tensor, data: Data,
                  batch_size: int) -> np.ndarray:
    """Flattened outputs of the named module for uint8 images, in eval mode, batch by batch."""
    captured = []
    hook = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: captured.append(out.flatten(1).float().cpu()))
    model.eval()
    try:
        for chunk in images.split(batch_size):
            model(prepare(chunk, data.mean, data.std))
    finally:
        hook.remove()
    return torch.cat(captured).numpy()


def tsne(features: np.ndarray, seed: int) -> np.ndarray:
    n, d = features.shape
    # Perplexity must stay below the number of points; PCA init needs two dimensions.
    model = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3),
                 init="pca" if d >= 2 else "random", max_iter=TSNE_ITERATIONS,
                 random_state=seed)
    # One OpenMP thread: on a shared 2-core machine two spinning threads ran 4x slower.
    with threadpool_limits(1):
        return model.fit_transform(features)


# ----------------------------------------------------------------------------- figures
def _curves(view: RunView, metric: str, what: str) -> Figure:
    if not view.records:
        raise Skipped("metrics.jsonl holds no epoch")
    test = (metrics.accuracy(view.predictions.labels, view.predictions.preds) if metric == "acc"
            else view.summary.get("test/loss"))
    shown = "—" if test is None else (f"{100 * test:.2f}%" if metric == "acc" else f"{test:.4f}")
    s = view.summary
    best = s.get("best_epoch")
    kept = best if choice(view.cfg.trainer.get("keep", "last")) == "best" else None
    model = f"model kept from epoch {kept}" if kept else "final model"
    title = f"{view.label}\n{what} per epoch; test/{metric} of the {model} {shown}"
    marks = {f"best {s['monitor']} (epoch {best})": best} if best else {}
    if s.get("stopped_early"):
        marks[f"stopped early (epoch {s['epochs']})"] = s["epochs"]
    return plots.curves(view.records, metric, test, title, marks, kept)


def _confusion(view: RunView) -> Figure:
    acc = metrics.accuracy(view.predictions.labels, view.predictions.preds)
    title = (f"{view.label}\nconfusion matrix on {len(view.predictions.labels):,} test images; "
             f"test/acc {100 * acc:.2f}%")
    return plots.confusion(view.confusion, view.data.class_names, title)


def _errors(view: RunView) -> Figure:
    p, names = view.predictions, view.data.class_names
    wrong = np.flatnonzero(p.labels != p.preds)
    if not len(wrong):
        raise Skipped("no misclassified test image")
    shown = wrong[np.argsort(-p.confidence[wrong], kind="stable")][:ERRORS_SHOWN]
    captions = [f"{names[p.labels[i]]}→{names[p.preds[i]]} ({100 * p.confidence[i]:.1f}%)"
                for i in shown]
    title = (f"{view.label}\nthe {len(shown)} most confident of {len(wrong):,} misclassified "
             f"test digits: true→predicted (confidence)")
    return plots.gallery(_test_images(view.data, shown), captions, title)


def _correct(view: RunView) -> Figure:
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


def _filters(view: RunView, which: str) -> Figure:
    convs = conv_layers(view.model)
    if not convs:
        raise Skipped(f"model {view.cfg.model.name} has no conv layer")
    if which == "first":
        name, conv = convs[0]
    else:
        # A 1x1 (pointwise) conv has no spatial pattern to look at: take the last larger one.
        spatial = [c for c in convs if max(c[1].kernel_size) > 1]
        name, conv = (spatial or convs)[-1]
    tiles, how = filter_tiles(conv)
    kh, kw = conv.kernel_size
    title = (f"{view.label}\n{which} conv layer {name}: {len(tiles)} filters {kh}×{kw} "
             f"({how}); grey-scale, each tile scaled to its own range")
    return plots.filters(tiles, title)


def _feature_maps(view: RunView) -> Figure:
    if not conv_layers(view.model):
        raise Skipped(f"model {view.cfg.model.name} has no conv layer")
    i, n = view.settings.sample_index, len(view.data.test)
    if i >= n:
        raise Skipped(f"report.sample_index={i} is beyond the test set ({n:,} images)")
    names, p = view.data.class_names, view.predictions
    title = (f"{view.label}\nfeature maps of test image {i} (true {names[p.labels[i]]}, "
             f"predicted {names[p.preds[i]]}): each conv/pool stage, each map scaled to its "
             f"own range")
    return plots.feature_maps(stage_outputs(view.model, view.data, i), title)


def _embedding(view: RunView) -> Figure:
    test, seed = view.data.test, view.cfg.seed
    n = min(view.settings.tsne_samples, len(test))
    # A seeded sample rather than the first n: the test file's order is not random.
    idx = np.sort(np.random.default_rng(seed).permutation(len(test))[:n])
    picked = torch.as_tensor(idx, device=test.images.device)
    layer = view.model.embedding
    features = layer_outputs(view.model, layer, test.images[picked], view.data,
                             view.cfg.trainer.eval_batch_size)
    width = features.shape[1]
    if width == 2:
        points, axis, method = features, "feature", "raw 2-D features (no t-SNE)"
    elif n < MIN_TSNE_POINTS:
        raise Skipped(f"t-SNE needs at least {MIN_TSNE_POINTS} test images, got {n}")
    else:
        points, axis, method = tsne(features, seed), "t-SNE", "t-SNE"
    title = f"{view.label}\n{method} of {layer} ({width} units) for {n:,} test images"
    return plots.embedding(points, test.labels[picked].cpu().numpy(), view.data.class_names,
                           axis, title)


def _test_images(data: Data, idx: np.ndarray) -> np.ndarray:
    rows = torch.as_tensor(idx, dtype=torch.long, device=data.test.images.device)
    return data.test.images[rows, 0].cpu().numpy()


# Plot name (= file stem under plots/ and a valid report.plots entry) -> figure maker.
FIGURES: dict[str, Callable[[RunView], Figure]] = {
    "loss": lambda v: _curves(v, "loss", "loss"),
    "accuracy": lambda v: _curves(v, "acc", "accuracy"),
    "confusion": _confusion,
    "errors": _errors,
    "correct": _correct,
    "filters_first": lambda v: _filters(v, "first"),
    "filters_last": lambda v: _filters(v, "last"),
    "feature_maps": _feature_maps,
    "embedding": _embedding,
}


# ----------------------------------------------------------------------------- report.html
# Report sections: heading and the figures drawn side by side under it.
FIGURE_SECTIONS = {
    "Training curves": ("loss", "accuracy"),
    "Confusion matrix": ("confusion",),
    "Misclassified and correctly classified test digits": ("errors", "correct"),
    "Learned filters": ("filters_first", "filters_last"),
    "Feature maps": ("feature_maps",),
    "Learned representation": ("embedding",),
}


def build_html(view: RunView, images: dict[str, bytes], skipped: dict[str, str],
               run_name: str) -> str:
    """One self-contained page: every PNG is embedded as a data: URI."""
    body = [f"<h1>{esc(run_name)}</h1>", f'<p class="label">{esc(view.label)}</p>',
            _notes_html(view, skipped), _cards_html(view)]
    for heading, names in FIGURE_SECTIONS.items():
        body.append(section(heading, _figures_html(images, skipped, names)))
        if heading == "Confusion matrix":
            body.append(section("Per-class report (classification.csv)", _per_class_html(view)))
    body += [section("Per-epoch metrics (metrics.jsonl)", _epochs_html(view.records)),
             section("Layers", _layers_html(view)),
             section("Summary (summary.json)", _summary_html(view.summary)),
             section("Resolved config",
                     f"<pre>{esc(OmegaConf.to_yaml(to_plain(view.cfg)))}</pre>")]
    return pages.page(f"{run_name}: {view.label}", "\n".join(part for part in body if part))


def findings(view: RunView, skipped: dict[str, str]) -> list[tuple[str, str]]:
    """(kind, text) notes for the top of the page; kind "warn" is drawn in red."""
    names, cm = view.data.class_names, view.confusion
    notes = []
    for name in metrics.never_predicted(cm, names):
        support = int(cm[names.index(name)].sum())
        notes.append(("warn", f"Class {name} is never predicted: all {support:,} of its test "
                              f"images go to other classes (see the confusion matrix)."))
    for name in metrics.absent(cm, names):
        notes.append(("info", f"The test set has no image of class {name}: its recall is "
                              f"undefined (—) and left out of the averages."))
    if view.records and not any("val/acc" in r for r in view.records):
        notes.append(("info", "No validation split (data.val_size=0): the curves show the "
                              "training split and the final test value only."))
    for name, reason in skipped.items():
        notes.append(("info", f"plots/{name}.png skipped: {reason}."))
    return notes


def _notes_html(view: RunView, skipped: dict[str, str]) -> str:
    return "\n".join(f'<p class="note {kind}">{esc(text)}</p>'
                     for kind, text in findings(view, skipped))


def _cards_html(view: RunView) -> str:
    s = view.summary
    worst = s.get("test/worst_class")
    cards = [("test accuracy", pct(s.get("test/acc"))),
             ("test loss", number(s.get("test/loss"))),
             ("macro recall", pct(s.get("test/macro_recall"))),
             ("macro F1", pct(s.get("test/macro_f1"))),
             ("worst class (recall)",
              f"{worst} ({pct(s.get('test/worst_class_recall'))})" if worst else "—"),
             ("final val accuracy", pct(s.get("final/val/acc"))),
             ("final train accuracy", pct(s.get("final/train/acc"))),
             ("parameters", f"{s['params']['total']:,}" if "params" in s else "—"),
             ("epochs", str(s.get("epochs", len(view.records))))]
    return '<div class="cards">' + "".join(
        f"<div class=\"card\"><b>{esc(value)}</b><span>{esc(name)}</span></div>"
        for name, value in cards) + "</div>"


def _figures_html(images: dict[str, bytes], skipped: dict[str, str],
                  names: Sequence[str]) -> str:
    parts = []
    for name in names:
        if name in images:
            parts.append(pages.embedded_figure(images[name], name, f"plots/{name}.png"))
        elif name in skipped:
            parts.append(f'<p class="note">plots/{name}.png skipped: {esc(skipped[name])}.</p>')
    return pages.figure_row(parts)


def _per_class_html(view: RunView) -> str:
    names = view.data.class_names
    never = set(metrics.never_predicted(view.confusion, names))
    recalls = [r["recall"] for r in view.rows[: len(names)] if r["support"]]
    # Mark the worst class only where it is worse than another one, not in a tie of equals.
    worst = view.summary.get("test/worst_class") if min(recalls) < max(recalls) else None
    predicted = dict(zip(names, view.confusion.sum(axis=0).tolist(), strict=True))
    body = []
    for r in view.rows:
        kind = ("never" if r["class"] in never else "worst" if r["class"] == worst
                else "avg" if r["class"] not in predicted else "")
        count = predicted.get(r["class"])
        body.append((kind, [r["class"], pct(r["precision"]), pct(r["recall"]), pct(r["f1"]),
                            f"{r['support']:,}", "" if count is None else f"{count:,}"]))
    note = ("<p>Red: a class the model never predicts; amber: the class with the lowest "
            "recall. — marks a value that is undefined (nothing predicted or no test image).</p>")
    return _table(["class", "precision", "recall", "F1", "support", "predicted"], body) + note


def _epochs_html(records: list[dict]) -> str:
    columns = [c for c in ("epoch", "train/loss", "train/acc", "val/loss", "val/acc", "lr",
                           "epoch_time_s") if any(c in r for r in records)]
    body = [("", [_value(c, r.get(c)) for c in columns]) for r in records]
    return _table(columns, body) if records else ""


def _layers_html(view: RunView) -> str:
    # A fresh CPU copy of the architecture: the table needs shapes and counts, not weights,
    # and the trained model may live on a GPU.
    model = models.build(view.cfg.model, len(view.data.class_names))
    body = [("", [r["layer"], r["type"], "×".join(map(str, r["output"])), f"{r['params']:,}"])
            for r in models.layer_table(model)]
    counts = models.param_counts(model)
    totals = ", ".join(f"{k.replace('_', '-')} {v:,}" for k, v in counts.items())
    return _table(["layer", "type", "output shape", "params"], body) + f"<p>{totals}</p>"


def _summary_html(summary: dict) -> str:
    return _table(["key", "value"], [("", [k, _value(k, v)]) for k, v in summary.items()])


def _table(header: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    """(row class, cells) pairs: the report marks rows (average, never predicted, worst)."""
    return pages.html_table(header, [cells for _, cells in rows], [kind for kind, _ in rows])


def _value(key: str, v: Any) -> str:
    """A summary or metrics value for people: fractions of accuracy-like keys as percents."""
    if isinstance(v, bool) or v is None:
        return "—" if v is None else str(v)
    if isinstance(v, float):
        return pct(v) if key.endswith(("acc", "recall", "f1")) else number(v)
    if isinstance(v, int):
        return f"{v:,}" if key != "epoch" else str(v)
    if isinstance(v, dict):
        return ", ".join(f"{k} {_value(k, x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "none"
    return str(v)
