"""plots.py on synthetic arrays: each figure renders to a PNG of the size its figure declares."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mnistcnn.reporting import markup, plots
from mnistcnn.reporting.metrics import pooled

RNG = np.random.default_rng(0)
NAMES = [str(d) for d in range(10)]


def render(fig) -> Image.Image:
    image = Image.open(io.BytesIO(plots.to_png(fig)))
    image.load()
    return image


def assert_size(fig, image: Image.Image) -> None:
    width, height = fig.get_size_inches() * plots.DPI
    assert image.size == (round(width), round(height))


def records(epochs: int, val: bool = True) -> list[dict]:
    out = []
    for e in range(1, epochs + 1):
        r = {"epoch": e, "train/loss": 1 / e, "train/acc": 1 - 0.5 / e}
        if val:
            r.update({"val/loss": 1.2 / e, "val/acc": 1 - 0.6 / e})
        out.append(r)
    return out


@pytest.mark.parametrize("metric", ["loss", "acc"])
def test_curves_have_a_fixed_size_and_integer_epoch_ticks(metric):
    fig = plots.curves(records(3), metric, 0.5, "conv5x5\nloss per epoch")
    assert render(fig).size == tuple(round(v * plots.DPI) for v in plots.CURVE_SIZE)
    ax = fig.axes[0]
    assert all(float(t).is_integer() for t in ax.get_xticks())
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["train", "val"] and labels[2].startswith("test")


def test_a_single_epoch_gets_the_tick_1_and_no_val_split_is_said():
    fig = plots.curves(records(1, val=False), "acc", 0.9, "one epoch")
    render(fig)
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1]
    assert ax.get_legend().get_title().get_text() == "no validation split"


def test_confusion_draws_counts_and_row_percentages_with_class_ticks():
    cm = RNG.integers(0, 50, size=(10, 10))
    cm[3] = 0  # an absent class: its normalised row is blank, not an error
    fig = plots.confusion(cm, NAMES, "run\nconfusion")
    assert_size(fig, render(fig))
    counts, normalised = fig.axes[:2]
    assert [t.get_text() for t in counts.get_yticklabels()] == NAMES
    assert counts.get_ylabel() == "true class" and counts.get_xlabel() == "predicted class"
    assert len(counts.texts) == 100 and len(normalised.texts) == 90


def test_confusion_rotates_long_class_names():
    names = ["T-shirt", "Trouser", "Pullover", "Dress"]
    fig = plots.confusion(RNG.integers(0, 9, size=(4, 4)), names, "fashion")
    render(fig)
    assert fig.axes[0].get_xticklabels()[0].get_rotation() == 45


def test_galleries_keep_their_width_and_caption_every_tile():
    images = RNG.integers(0, 255, size=(11, 28, 28), dtype=np.uint8)
    captions = [f"{i}→{i + 1} (99.0%)" for i in range(11)]
    fig = plots.gallery(images, captions, "errors")
    image = render(fig)
    assert_size(fig, image)
    assert image.size[0] == plots.GALLERY_WIDTH * plots.DPI
    assert [ax.get_title() for ax in fig.axes[:11]] == captions

    rows = [("0\n3/5", images[:3]), ("1\n0/4", images[:0])]  # a class with none correct
    fig = plots.class_gallery(rows, 10, "correct")
    assert render(fig).size[0] == plots.GALLERY_WIDTH * plots.DPI


def test_mosaic_scales_each_tile_and_leaves_gaps():
    tiles = np.stack([np.arange(4.0).reshape(2, 2), np.full((2, 2), 7.0)])
    grid = plots.mosaic(tiles, cols=2)
    assert grid.shape == (2, 5)
    np.testing.assert_allclose(grid[:, :2], [[0, 1 / 3], [2 / 3, 1]])
    assert np.isnan(grid[:, 2]).all()  # the gap between tiles
    assert (grid[:, 3:] == 0).all()  # a constant tile


def test_filters_and_feature_maps_render_at_their_width():
    fig = plots.filters(RNG.normal(size=(32, 5, 5)), "filters")
    assert render(fig).size[0] == plots.FILTER_WIDTH * plots.DPI
    stages = [("input", RNG.random((1, 28, 28))), ("conv1", RNG.random((100, 14, 14)))]
    fig = plots.feature_maps(stages, "maps")
    assert render(fig).size[0] == plots.FEATURE_WIDTH * plots.DPI
    assert "first 64 of 100 channels" in fig.axes[1].get_title(loc="left")


def test_embedding_has_a_legend_of_the_classes_present():
    labels = np.arange(300) % 4
    fig = plots.embedding(RNG.normal(size=(300, 2)), labels, NAMES, "t-SNE", "emb")
    assert render(fig).size == tuple(round(v * plots.DPI) for v in plots.EMBEDDING_SIZE)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == NAMES[:4]
    assert ax.get_xlabel() == "t-SNE 1"


def test_long_titles_are_wrapped_to_the_figure():
    title = "conv5x5 " + " ".join(f"knob{i}=value" for i in range(20)) + "\nloss per epoch"
    fig = plots.curves(records(2), "loss", None, title)
    assert fig.get_suptitle().count("\n") >= 2


def test_figures_are_saved_as_the_png_returned_at_their_declared_width(tmp_path):
    fig = plots.new_figure(3.0, 2.0)
    fig.add_subplot().plot([0, 1], [1, 0])
    png = plots.save_png(tmp_path / "f.png", fig)
    assert (tmp_path / "f.png").read_bytes() == png and png[:4] == b"\x89PNG"
    assert markup.png_width(png) == 3 * plots.DPI  # no tight-bbox cropping


def test_comparison_figures_draw_every_configuration_over_seeds():
    a, b = pooled([0.97, 0.98]), pooled([0.96])
    fig = plots.seed_curves([("training", [("x=1", [(1, a), (2, a)]), ("x=2", [(1, b)])]),
                             ("validation", [("x=1", [(1, a)]), ("x=2", [])])],
                            "acc", "Accuracy per epoch")
    render(fig)
    assert [ax.get_title() for ax in fig.axes] == ["training", "validation"]
    assert fig.axes[0].get_ylabel() == "accuracy (%)"
    fig = plots.accuracy_bars([("x=1", a), ("x=2", b)], "Test accuracy")
    assert render(fig).size[0] == plots.BARS_WIDTH * plots.DPI
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    ticks = sorted(zip(ax.get_yticks(), labels, strict=True))
    assert [label for _, label in ticks] == ["x=2\n96.00", "x=1\n97.50 ± 0.71"]  # first on top


def test_the_prediction_sheet_captions_file_class_and_confidence():
    images = RNG.integers(0, 255, size=(2, 28, 28), dtype=np.uint8)
    rows = [{"file": "a/seven.png", "pred": "7", "confidence": 0.987},
            {"file": "b/" + "x" * 30 + ".png", "pred": "1", "confidence": 0.5}]
    fig = plots.prediction_sheet(images, rows, "outputs/runs/r")
    render(fig)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["seven.png\n7 99%",
                                                       "x" * 17 + "…\n1 50%"]
    assert "2 inputs as the model of outputs/runs/r saw them" in fig.get_suptitle()
