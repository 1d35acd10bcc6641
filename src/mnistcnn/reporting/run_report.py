"""The run report: the files a finished run explains itself with (confusion.csv,
classification.csv, plots/, report.html).

`write_run_files` is the one entry point, called by `train` once model.pt is saved
and by `evaluate` once the test set is predicted again. Every number comes from
the run folder (predictions.csv, metrics.jsonl, the summary) and every picture
from the trained model and the test images (run_figures.FIGURES draws them), so an old run
can be re-reported. The page is a list of markup.py blocks. A figure that does not
apply to a run (no conv layer, no validation split, no misclassified digit, ...) is
skipped with a note in the report, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnistcnn import models
from mnistcnn.base import run_folder
from mnistcnn.base.config import MODEL_SCHEMAS, choice, report_settings, to_plain
from mnistcnn.base.formats import ABSENT, number, pct
from mnistcnn.base.run_folder import CLASSIFICATION, METRICS, PLOTS, SUMMARY, RunFolder
from mnistcnn.data.dataset import Data
from mnistcnn.reporting import metrics, plots
from mnistcnn.reporting.markup import (
    Block,
    Cards,
    Code,
    Figures,
    Heading,
    Image,
    Paragraph,
    Section,
    Table,
    page,
)
from mnistcnn.reporting.predictions import read_predictions
from mnistcnn.reporting.run_figures import FIGURES, RunView, Skipped


# ----------------------------------------------------------------------------- entry point
def write_run_files(run_dir: str | Path, cfg: DictConfig, model: nn.Module, data: Data,
                    summary: dict) -> dict:
    """Write confusion.csv and classification.csv, and unless report.enabled=false the
    plots and report.html, into run_dir. Returns the keys summary.json gains."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    settings = report_settings(cfg)
    predictions = read_predictions(folder.predictions)
    names = data.class_names
    cm = metrics.confusion(predictions.labels, predictions.preds, len(names))
    rows = metrics.per_class(predictions.labels, predictions.preds, names)
    write_confusion_csv(folder.confusion, cm, names)
    write_classification_csv(folder.classification, rows)
    keys = metrics.summary_keys(rows, cm, names)
    if not settings.enabled:
        return keys
    records = run_folder.read_jsonl(folder.metrics) if folder.metrics.is_file() else []
    view = RunView(cfg=cfg, settings=settings, label=run_label(cfg), model=model, data=data,
                   records=records, predictions=predictions, confusion=cm, rows=rows,
                   summary={**summary, **keys})
    wanted = list(settings.plots) if settings.plots is not None else list(FIGURES)
    images, skipped = draw_figures(view, wanted, folder.plots)
    page_blocks = blocks(view, images, skipped, run_dir.name)
    title = f"{run_dir.name}: {view.label}"
    run_folder.write_text(folder.report, page(title, page_blocks))
    return keys


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
def write_confusion_csv(path: Path, cm: np.ndarray, class_names: Sequence[str]) -> None:
    """Counts with true classes on rows and predicted classes on columns."""
    run_folder.write_csv(path, ["true\\pred", *class_names],
                         ([name, *row] for name, row in zip(class_names, cm.tolist(), strict=True)))


def write_classification_csv(path: Path, rows: list[dict]) -> None:
    """Per-class rows then the averages; an undefined value is written as `nan`."""
    run_folder.write_csv(path, metrics.COLUMNS, ([row[c] for c in metrics.COLUMNS] for row in rows))


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
        images[name] = plots.save_png(path, fig)
    return images, skipped


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


def blocks(view: RunView, images: dict[str, bytes], skipped: dict[str, str],
           run_name: str) -> list[Block]:
    """The report page: headline numbers, the figures by section, then the run's tables."""
    out: list[Block] = [Heading(run_name), Paragraph(view.label, "label")]
    out += [Paragraph(text, f"note {kind}") for kind, text in findings(view, skipped)]
    out.append(_cards(view))
    for heading, names in FIGURE_SECTIONS.items():
        out.append(Section(heading, [_figures(images, skipped, names)]))
        if heading == "Confusion matrix":
            out.append(Section(f"Per-class report ({CLASSIFICATION})", _per_class(view)))
    out += [Section(f"Per-epoch metrics ({METRICS})", _epochs(view.records)),
            Section("Layers", _layers(view)),
            Section(f"Summary ({SUMMARY})", [Table(["key", "value"], [
                [k, _value(k, v)] for k, v in view.summary.items()])]),
            Section("Resolved config", [Code(OmegaConf.to_yaml(to_plain(view.cfg)))])]
    return out


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
        notes.append(("info", f"{PLOTS}/{name}.png skipped: {reason}."))
    return notes


def _cards(view: RunView) -> Cards:
    s = view.summary
    worst = s.get("test/worst_class")
    return Cards([("test accuracy", pct(s.get("test/acc"))),
                  ("test loss", number(s.get("test/loss"))),
                  ("macro recall", pct(s.get("test/macro_recall"))),
                  ("macro F1", pct(s.get("test/macro_f1"))),
                  ("worst class (recall)",
                   f"{worst} ({pct(s.get('test/worst_class_recall'))})" if worst else ABSENT),
                  ("final val accuracy", pct(s.get("final/val/acc"))),
                  ("final train accuracy", pct(s.get("final/train/acc"))),
                  ("parameters", f"{s['params']['total']:,}" if "params" in s else ABSENT),
                  ("epochs", str(s.get("epochs", len(view.records))))])


def _figures(images: dict[str, bytes], skipped: dict[str, str], names: Sequence[str]) -> Figures:
    """The named figures side by side, a note in place of each one skipped."""
    items: list[Block] = []
    for name in names:
        if name in images:
            items.append(Image(f"{PLOTS}/{name}.png", images[name]))
        elif name in skipped:
            items.append(Paragraph(f"{PLOTS}/{name}.png skipped: {skipped[name]}.", "note"))
    return Figures(items)


def _per_class(view: RunView) -> list[Block]:
    names = view.data.class_names
    never = set(metrics.never_predicted(view.confusion, names))
    recalls = [r["recall"] for r in view.rows[: len(names)] if r["support"]]
    # Mark the worst class only where it is worse than another one, not in a tie of equals.
    worst = view.summary.get("test/worst_class") if min(recalls) < max(recalls) else None
    predicted = dict(zip(names, view.confusion.sum(axis=0).tolist(), strict=True))
    body, kinds = [], []
    for r in view.rows:
        kinds.append("never" if r["class"] in never else "worst" if r["class"] == worst
                     else "avg" if r["class"] not in predicted else "")
        count = predicted.get(r["class"])
        body.append([r["class"], pct(r["precision"]), pct(r["recall"]), pct(r["f1"]),
                     f"{r['support']:,}", "" if count is None else f"{count:,}"])
    return [Table(["class", "precision", "recall", "F1", "support", "predicted"], body, kinds),
            Paragraph("Red: a class the model never predicts; amber: the class with the lowest "
                      "recall. — marks a value that is undefined (nothing predicted or no test "
                      "image).")]


def _epochs(records: list[dict]) -> list[Block]:
    columns = [c for c in ("epoch", "train/loss", "train/acc", "val/loss", "val/acc", "lr",
                           "epoch_time_s") if any(c in r for r in records)]
    return [Table(columns, [[_value(c, r.get(c)) for c in columns] for r in records])
            ] if records else []


def _layers(view: RunView) -> list[Block]:
    # A fresh CPU copy of the architecture: the table needs shapes and counts, not weights,
    # and the trained model may live on a GPU.
    model = models.build(view.cfg.model, len(view.data.class_names))
    body = [[r["layer"], r["type"], "×".join(map(str, r["output"])), f"{r['params']:,}"]
            for r in models.layer_table(model)]
    counts = models.param_counts(model)
    totals = ", ".join(f"{k.replace('_', '-')} {v:,}" for k, v in counts.items())
    return [Table(["layer", "type", "output shape", "params"], body), Paragraph(totals)]


def _value(key: str, v: Any) -> str:
    """A summary or metrics value for people: fractions of accuracy-like keys as percents."""
    if isinstance(v, bool) or v is None:
        return ABSENT if v is None else str(v)
    if isinstance(v, float):
        return pct(v) if key.endswith(("acc", "recall", "f1")) else number(v)
    if isinstance(v, int):
        return f"{v:,}" if key != "epoch" else str(v)
    if isinstance(v, dict):
        return ", ".join(f"{k} {_value(k, x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "none"
    return str(v)
