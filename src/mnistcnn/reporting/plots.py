"""Drawing primitives: every figure mnistcnn draws is drawn here, on matplotlib's Agg
canvas, from plain numbers and arrays (never a model or a file) and returned as a Figure:
training curves, confusion matrices, galleries, filter and feature-map mosaics, embeddings
(the run report's figures, which run_figures.py picks from a run and titles), the
comparison's curves and bars over seeds, a question's effects, and predict's sheet.

Figures are built on `new_figure` (`Figure` + `FigureCanvasAgg`) rather than pyplot: no
display is needed and no global figure registry grows over a sweep. Every figure is WIDTH
inches wide (fixed per kind) and as tall as its content needs, at DPI dots per inch, with
no tight-bbox cropping: a PNG's pixel size follows from the figure's
`get_size_inches() * DPI`. One palette (`colors`) serves classes and compared
configurations alike.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mnistcnn.base import run_folder
from mnistcnn.base.formats import amount, mean_std, pct
from mnistcnn.reporting.metrics import Stat, normalize_rows

DPI = 100
CURVE_SIZE = (6.4, 4.4)
GALLERY_WIDTH = 12.0
GALLERY_COLUMNS = 8
FILTER_WIDTH = 6.4
FEATURE_WIDTH = 12.0
FEATURE_COLUMNS = 16
FEATURE_CHANNELS = 64  # most channels drawn per stage: 4 rows of 16 stay readable
EMBEDDING_SIZE = (8.0, 6.6)
SEED_CURVES_PANEL = (5.2, 4.6)  # one panel (training or validation) of a comparison's curves
BARS_WIDTH = 8.0
TITLE_SIZE = 11
CHARS_PER_INCH = 13  # of an 11-point title: where a suptitle line is wrapped


# ----------------------------------------------------------------------------- canvas
def new_figure(width: float, height: float) -> Figure:
    """An empty figure of width x height inches on the Agg canvas, laid out by matplotlib's
    constrained layout (no tight-bbox cropping: the PNG is exactly width*DPI wide)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_png(path: Path, fig: Figure) -> bytes:
    """Render fig, write it atomically to path, and return the PNG (to embed it)."""
    png = to_png(fig)
    run_folder.atomic_write(path, lambda f: f.write(png))
    return png


def _figure(width: float, height: float, title: str) -> Figure:
    fig = new_figure(width, height)
    # Titles carry the run label, which grows with the settings: wrap rather than clip.
    lines = [textwrap.fill(line, int(width * CHARS_PER_INCH), break_on_hyphens=False)
             for line in title.splitlines()]
    fig.suptitle("\n".join(lines), fontsize=TITLE_SIZE)
    return fig


def _title_height(title: str, width: float) -> float:
    """Inches a wrapped suptitle takes, so content-sized figures leave room for it."""
    lines = sum(len(textwrap.wrap(line, int(width * CHARS_PER_INCH), break_on_hyphens=False)) or 1
                for line in title.splitlines())
    return 0.25 * lines + 0.2


def colors(n: int) -> list:
    """n distinct colours: tab10 up to ten (classes, configurations), tab20 beyond."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _grey():
    """Grey-scale with the NaN gaps between tiles drawn white."""
    return colormaps["gray"].with_extremes(bad="white")


# ----------------------------------------------------------------------------- curves
def curves(records: Sequence[dict], metric: str, test_value: float | None, title: str,
           marks: dict[str, int] | None = None, test_epoch: int | None = None) -> Figure:
    """Train and val `metric` ("loss" or "acc") per epoch on one axis; the test value of the
    scored model is a star at `test_epoch` (default: the last). `marks` {label: epoch} are
    dashed vertical lines (the best epoch, an early stop). Accuracies are drawn in percent."""
    scale, ylabel = (100, "accuracy (%)") if metric == "acc" else (1, "loss")
    fig = _figure(*CURVE_SIZE, title)
    ax = fig.add_subplot()
    for split, marker in (("train", "o"), ("val", "s")):
        points = [(r["epoch"], r[f"{split}/{metric}"] * scale) for r in records
                  if r.get(f"{split}/{metric}") is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker=marker, label=split)
    if test_value is not None and records:
        text = pct(test_value) if metric == "acc" else amount(test_value, "loss")
        at = test_epoch or records[-1]["epoch"]
        which = "final" if at == records[-1]["epoch"] else f"epoch {at}"
        ax.plot(at, test_value * scale, marker="*", markersize=14, linestyle="none",
                color="C3", label=f"test ({which}) {text}")
    for i, (label, epoch) in enumerate((marks or {}).items()):
        ax.axvline(epoch, linestyle="--", linewidth=1, color=f"C{4 + i}", label=label)
    # min_n_ticks=1: a one-epoch run gets the tick "1", not fractions around it.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if records:  # else one epoch spans 0.95-1.05 and the ticks would be fractions
        ax.set_xlim(0.5, records[-1]["epoch"] + 0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    has_val = any(r.get(f"val/{metric}") is not None for r in records)
    ax.legend(title=None if has_val else "no validation split")
    return fig


# ----------------------------------------------------------------------------- confusion
def confusion(cm: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Counts (left) and row-normalised percentages (right): true on rows, predicted on columns."""
    k = len(class_names)
    cell = max(0.45, 5.5 / k)
    side = cell * k + 1.2
    fig = _figure(2 * side + 0.6, side + 0.4 + _title_height(title, 2 * side), title)
    left, right = fig.subplots(1, 2)
    _matrix(left, cm.astype(float), class_names, "{:.0f}", "counts")
    _matrix(right, 100 * normalize_rows(cm), class_names, "{:.1f}",
            "% of each true class (row-normalised)")
    return fig


def _matrix(ax, values: np.ndarray, class_names: Sequence[str], fmt: str, label: str) -> None:
    k = len(class_names)
    finite = values[np.isfinite(values)]
    top = finite.max() if finite.size and finite.max() > 0 else 1.0
    ax.imshow(np.nan_to_num(values), cmap="Blues", vmin=0, vmax=top)
    size = 9 if k <= 10 else 7
    for i in range(k):
        for j in range(k):
            v = values[i, j]
            if np.isfinite(v):
                # Dark cells get white text, light cells black, so every number stays legible.
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=size,
                        color="white" if v > top / 2 else "black")
    ticks = range(k)
    rotate = max(len(n) for n in class_names) > 2
    ax.set_xticks(ticks, class_names, rotation=45 if rotate else 0, ha="right" if rotate else
                  "center")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(label, fontsize=10)


# ----------------------------------------------------------------------------- galleries
def gallery(images: np.ndarray, captions: Sequence[str], title: str) -> Figure:
    """uint8 images [n, H, W] in a grid, each with its caption above it."""
    cols = GALLERY_COLUMNS
    rows = math.ceil(len(images) / cols)
    tile = GALLERY_WIDTH / cols
    fig = _figure(GALLERY_WIDTH, rows * (tile + 0.1) + _title_height(title, GALLERY_WIDTH),
                  title)
    for ax, image, caption in zip(fig.subplots(rows, cols, squeeze=False).flat, images,
                                  captions, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=9)
    for ax in fig.axes:
        ax.set_axis_off()
    return fig


def class_gallery(rows: Sequence[tuple[str, np.ndarray]], per_row: int, title: str) -> Figure:
    """One row per class: its label on the left, up to `per_row` uint8 images [n, H, W]."""
    height = GALLERY_WIDTH / (per_row + 1.5)
    fig = _figure(GALLERY_WIDTH, len(rows) * height + _title_height(title, GALLERY_WIDTH),
                  title)
    for ax, (label, images) in zip(fig.subplots(len(rows), 1, squeeze=False).flat, rows,
                                   strict=True):
        side = images.shape[-1] if len(images) else 28
        strip = np.full((side, per_row * (side + 2)), np.nan)
        for i, image in enumerate(images[:per_row]):
            strip[:, i * (side + 2): i * (side + 2) + side] = image
        ax.imshow(strip, cmap=_grey(), vmin=0, vmax=255)
        if not len(images):
            ax.text(0.02, 0.5, "none", transform=ax.transAxes, va="center", color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig


# ----------------------------------------------------------------------------- filters and maps
def mosaic(tiles: np.ndarray, cols: int) -> np.ndarray:
    """Tiles [n, h, w] on a grid `cols` wide, each scaled to [0, 1] by its own range (a
    constant tile is 0), separated by NaN gaps that draw as the background."""
    n, h, w = tiles.shape
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for i, t in enumerate(tiles.astype(float)):
        span = t.max() - t.min()
        r, c = divmod(i, cols)
        out[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = \
            (t - t.min()) / span if span > 0 else 0.0
    return out


def filters(tiles: np.ndarray, title: str) -> Figure:
    """Conv weights, one grey-scale tile [kh, kw] per filter, each scaled to its own range."""
    # About twice as wide as tall: 16 filters make 8 x 2, 32 make 8 x 4, 128 make 16 x 8.
    rows = max(1, math.floor(math.sqrt(len(tiles) / 2)))
    cols = math.ceil(len(tiles) / rows)
    grid = mosaic(tiles, cols)
    image_height = FILTER_WIDTH * grid.shape[0] / grid.shape[1]
    fig = _figure(FILTER_WIDTH, image_height + _title_height(title, FILTER_WIDTH) + 0.1, title)
    ax = fig.add_subplot()
    ax.imshow(grid, cmap=_grey(), vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    return fig


def feature_maps(stages: Sequence[tuple[str, np.ndarray]], title: str) -> Figure:
    """A row per stage (name, activations [C, H, W]), channels tiled FEATURE_COLUMNS wide,
    each map scaled to its own range; the first FEATURE_CHANNELS channels at most."""
    grids, labels = [], []
    for name, maps in stages:
        shown = maps[:FEATURE_CHANNELS]
        grid = mosaic(shown, FEATURE_COLUMNS)
        # Pad every row to the full width so that a tile keeps its size within a row.
        h, w = maps.shape[1:]
        width = FEATURE_COLUMNS * (w + 1) - 1
        grids.append(np.pad(grid, ((0, 0), (0, width - grid.shape[1])), constant_values=np.nan))
        shape = "×".join(map(str, maps.shape))
        more = f", first {len(shown)} of {len(maps)} channels" if len(shown) < len(maps) else ""
        labels.append(f"{name}  ({shape}{more})")
    ratios = [g.shape[0] / g.shape[1] for g in grids]
    label_space = 0.3
    height = sum(FEATURE_WIDTH * r + label_space for r in ratios)
    fig = _figure(FEATURE_WIDTH, height + _title_height(title, FEATURE_WIDTH), title)
    axes = fig.subplots(len(grids), 1, squeeze=False, height_ratios=ratios).flat
    for ax, grid, label in zip(axes, grids, labels, strict=True):
        ax.imshow(grid, cmap=_grey(), vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, loc="left", fontsize=10)
        ax.set_axis_off()
    return fig


# ----------------------------------------------------------------------------- embedding
def embedding(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
              axis_name: str, title: str) -> Figure:
    """2-D points coloured by class, with a legend of the classes present."""
    fig = _figure(*EMBEDDING_SIZE, title)
    ax = fig.add_subplot()
    palette = colors(len(class_names))
    for c, name in enumerate(class_names):
        mine = labels == c
        if mine.any():
            ax.scatter(points[mine, 0], points[mine, 1], s=7, alpha=0.7, color=palette[c],
                       label=name, linewidths=0)
    ax.set_xlabel(f"{axis_name} 1")
    ax.set_ylabel(f"{axis_name} 2")
    ax.legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=2.5,
              frameon=False)
    ax.grid(alpha=0.2)
    return fig


# ----------------------------------------------------------------------------- over seeds
def seed_curves(panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[tuple[int, Stat]]]]]],
                quantity: str, title: str) -> Figure:
    """One panel per (panel title, [(configuration, [(epoch, Stat)])]): each configuration's
    mean line with a ± std band. quantity "acc" is drawn in percent, anything else as is."""
    name = "accuracy" if quantity == "acc" else "loss"
    scale = 100 if quantity == "acc" else 1
    width = SEED_CURVES_PANEL[0] * len(panels) + 0.6
    fig = _figure(width, SEED_CURVES_PANEL[1], title)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, lines) in zip(axes, panels, strict=True):
        for (label, curve), color in zip(lines, colors(len(lines)), strict=True):
            _draw_curve(ax, curve, scale, color, label)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name} (%)" if quantity == "acc" else name)
        # Whole epochs only: a tick at 1.5 epochs reads as a measurement that was never made.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.margins(x=0.05 if ax.get_xlim()[1] - ax.get_xlim()[0] >= 1 else 1)
        # Plain tick values: arms 0.01 points apart would otherwise get "+4.674e1" offsets.
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    # One legend below all panels: it names the compared values and never hides a curve.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8,
               ncol=_legend_columns(labels, width))
    return fig


def _draw_curve(ax, curve: Sequence[tuple[int, Stat]], scale: float, color, label: str) -> None:
    epochs = [e for e, _ in curve]
    mean = [scale * s.mean for _, s in curve]
    std = [scale * (s.std or 0) for _, s in curve]
    if len(curve) == 1:  # a band needs two epochs; one epoch gets an error bar
        ax.errorbar(epochs, mean, yerr=std, marker="o", markersize=4, capsize=4, color=color,
                    label=label)
        return
    ax.plot(epochs, mean, marker="o", markersize=3, color=color, label=label)
    ax.fill_between(epochs, [m - s for m, s in zip(mean, std, strict=True)],
                    [m + s for m, s in zip(mean, std, strict=True)],
                    color=color, alpha=0.2, linewidth=0)


def _legend_columns(labels: Sequence[str], width_in: float) -> int:
    """As many legend columns as the longest label lets fit across the figure (8 pt text is
    about 14 characters an inch, plus the line sample)."""
    longest = max((len(label) for label in labels), default=1) + 6
    return max(1, min(len(labels), 4, int(14 * width_in) // longest))


def accuracy_bars(arms: Sequence[tuple[str, Stat]], title: str) -> Figure:
    """Horizontal bars of accuracies (label, Stat of fractions), the first on top, ± std
    error bars and one dot per run. The axis is zoomed to the data: MNIST accuracies differ
    in tenths of a point near 99%."""
    fig = _figure(BARS_WIDTH, 1.2 + 0.55 * max(len(arms), 1), title)
    ax = fig.add_subplot()
    y = list(range(len(arms)))[::-1]
    means = [100 * s.mean for _, s in arms]
    stds = [100 * (s.std or 0) for _, s in arms]
    ax.barh(y, means, xerr=stds, color=colors(len(arms)), alpha=0.8, capsize=3)
    for yi, (_, s) in zip(y, arms, strict=True):
        ax.plot([100 * v for v in s.values], [yi] * len(s.values), "k.", markersize=4)
    # The numbers go with the names, where no bar or error bar can cover them.
    ax.set_yticks(y, [f"{label}\n{mean_std(s, 'acc')}" for label, s in arms], fontsize=8)
    if arms:
        lows = [100 * min(s.values) for _, s in arms] + [m - sd for m, sd in
                                                         zip(means, stds, strict=True)]
        highs = [100 * max(s.values) for _, s in arms] + [m + sd for m, sd in
                                                          zip(means, stds, strict=True)]
        pad = max(0.5, 0.15 * (max(highs) - min(lows)))
        ax.set_xlim(max(0.0, min(lows) - pad), max(highs) + pad)
    ax.set_xlabel("test accuracy (%), axis zoomed")
    ax.grid(axis="x", alpha=0.3)
    return fig


def effects(rows: Sequence[tuple[str, float, float | None, float | None, str]],
            margin: float | None, one_sided_margin: bool, title: str) -> Figure:
    """A question's effects at a glance: one row per comparison (label, difference,
    interval low, high, reading), the first on top, a dot at the difference and a bar over
    its interval, against a zero line; the margin as a band (±margin) or, for "enough",
    a line at -margin with the band above it. Points of test accuracy."""
    # Verdicts are long runs of name=level words, wider per character than the prose that
    # CHARS_PER_INCH is measured on: wrap them shorter.
    title = "\n".join(textwrap.fill(line, int(0.8 * BARS_WIDTH * CHARS_PER_INCH))
                      for line in title.splitlines())
    fig = _figure(BARS_WIDTH, _title_height(title, BARS_WIDTH) + 0.9 + 0.45 * len(rows), title)
    ax = fig.add_subplot()
    y = list(range(len(rows)))[::-1]
    if margin is not None:
        ax.axvspan(-margin, 1e9 if one_sided_margin else margin, color="tab:green", alpha=0.12,
                   lw=0, label=f"margin {margin:g} points")
        ax.axvline(-margin, color="tab:green", lw=1, ls="--")
    ax.axvline(0, color="0.3", lw=1)
    ends = [0.0] + [-margin if margin else 0.0]
    for yi, (_, diff, low, high, reading) in zip(y, rows, strict=True):
        color = "tab:blue" if low is not None else "0.5"
        if low is not None:
            ax.plot([low, high], [yi, yi], color=color, lw=2.5, solid_capstyle="butt")
            ends += [low, high]
        ax.plot([diff], [yi], "o", color=color, markersize=6)
        ends.append(diff)
        ax.annotate(reading, (diff, yi), xytext=(0, 7), textcoords="offset points",
                    ha="center", fontsize=7, color="0.25")
    pad = max(0.1, 0.08 * (max(ends) - min(ends)))
    ax.set_xlim(min(ends) - pad, max(ends) + pad)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_yticks(y, [label for label, *_ in rows], fontsize=8)
    ax.set_xlabel("difference in test accuracy (points), with the interval of its test")
    ax.grid(axis="x", alpha=0.3)
    if margin is not None:
        ax.legend(loc="lower right", fontsize=7, frameon=False)
    return fig


# ----------------------------------------------------------------------------- predict
def prediction_sheet(images: np.ndarray, rows: Sequence[dict], source: str) -> Figure:
    """predict --show: the 28x28 inputs as the model saw them, each captioned with its file
    name, the predicted class and the confidence."""
    captions = []
    for row in rows:
        name = Path(row["file"]).name
        short = name if len(name) <= 18 else name[:17] + "…"
        captions.append(f"{short}\n{row['pred']} {pct(row['confidence'], 0)}")
    return gallery(images, captions, f"{len(rows)} inputs as the model of {source} saw them")
