"""The run report: one short CLI run checked end to end (train, then evaluate), and the
figures of every model and the skip paths in-process on freshly built models."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging

import numpy as np
import pytest
import torch
from conftest import make_dataset, run_main, synthetic_images, write_idx
from PIL import Image
from sklearn.metrics import classification_report

from mnistcnn import models
from mnistcnn.base import run_folder
from mnistcnn.base.config import (
    REPORT_PLOTS,
    compose_config,
    report_settings,
    saved_config,
)
from mnistcnn.base.config_checks import validate
from mnistcnn.base.errors import UserError
from mnistcnn.data.dataset import LABEL_MAGIC, Data, Split, read_idx
from mnistcnn.reporting import plots, probes, run_figures, run_report
from mnistcnn.reporting.predictions import Predictions, write_predictions
from mnistcnn.runs.console import log_class_findings
from mnistcnn.runs.preflight import check_overrides
from mnistcnn.training.engine import predict

# docs/run-folder.md's list of plots/*.png: the code must draw exactly these.
PLOTS = ["loss", "accuracy", "confusion", "errors", "correct", "filters_first", "filters_last",
         "feature_maps", "embedding"]
GROUPS = "{0:[0,6],1:[1,7],2:[2,3,5,8],3:[4,9]}"
FILES = ["confusion.csv", "classification.csv", "report.html",
         *[f"plots/{name}.png" for name in PLOTS]]
# Pixel widths (and heights, where fixed) that plots.py declares for each figure.
WIDTHS = {"loss": plots.CURVE_SIZE[0], "accuracy": plots.CURVE_SIZE[0],
          "errors": plots.GALLERY_WIDTH, "correct": plots.GALLERY_WIDTH,
          "filters_first": plots.FILTER_WIDTH, "filters_last": plots.FILTER_WIDTH,
          "feature_maps": plots.FEATURE_WIDTH, "embedding": plots.EMBEDDING_SIZE[0]}
HEIGHTS = {"loss": plots.CURVE_SIZE[1], "accuracy": plots.CURVE_SIZE[1],
           "embedding": plots.EMBEDDING_SIZE[1]}


# ----------------------------------------------------------------------------- one CLI run
@pytest.fixture(scope="module")
def trained(synthetic_dir, tmp_path_factory):
    """A short tiny-model run on synthetic data: 300 training images, so it still errs."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    # On the CPU: evaluate (on the CPU) must rebuild the same files byte for byte.
    result = run_main("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                      "data.limit=300", "trainer.epochs=1", "report.tsne_samples=200",
                      "trainer.device=cpu", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir, result


def read_csv(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_the_readme_plots_are_the_ones_drawn():
    # The config's list (what report.plots accepts) and the figure makers name the same
    # plots, in the same order.
    assert list(run_figures.FIGURES) == list(REPORT_PLOTS) == PLOTS


def test_train_writes_every_report_file(trained):
    run_dir, _ = trained
    missing = [name for name in FILES if not (run_dir / name).is_file()]
    assert not missing


@pytest.mark.parametrize("name", PLOTS)
def test_every_plot_decodes_at_its_declared_size(trained, name):
    run_dir, _ = trained
    image = Image.open(run_dir / "plots" / f"{name}.png")
    image.load()
    assert image.format == "PNG"
    width, height = image.size
    if name in WIDTHS:
        assert width == round(WIDTHS[name] * plots.DPI)
    if name in HEIGHTS:
        assert height == round(HEIGHTS[name] * plots.DPI)
    assert np.asarray(image.convert("L")).std() > 0  # not a blank canvas


def test_confusion_csv_sums_to_the_test_size_and_matches_test_acc(trained):
    run_dir, _ = trained
    rows = read_csv(run_dir / "confusion.csv")
    assert rows[0][0] == "true\\pred" and rows[0][1:] == [str(d) for d in range(10)]
    cm = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    summary = run_folder.read_json(run_dir / "summary.json")
    assert cm.sum() == 500  # the synthetic test set
    assert np.trace(cm) / cm.sum() == pytest.approx(summary["test/acc"], abs=1e-6)


def test_classification_csv_agrees_with_scikit_learn_on_predictions(trained):
    run_dir, _ = trained
    preds = np.loadtxt(run_dir / "predictions.csv", delimiter=",", skiprows=1)
    names = [str(d) for d in range(10)]
    ref = classification_report(preds[:, 1].astype(int), preds[:, 2].astype(int),
                                labels=range(10), target_names=names, output_dict=True,
                                zero_division=np.nan)
    rows = read_csv(run_dir / "classification.csv")
    assert rows[0] == ["class", "precision", "recall", "f1", "support"]
    assert [r[0] for r in rows[1:]] == [*names, "macro avg", "weighted avg"]
    for name, *values in rows[1:]:
        want = ref[name]
        np.testing.assert_allclose([float(v) for v in values],
                                   [want["precision"], want["recall"], want["f1-score"],
                                    want["support"]], equal_nan=True)
    summary = run_folder.read_json(run_dir / "summary.json")
    assert summary["test/macro_recall"] == pytest.approx(ref["macro avg"]["recall"])
    assert summary["test/macro_f1"] == pytest.approx(ref["macro avg"]["f1-score"])
    worst = summary["test/worst_class"]
    assert summary["test/worst_class_recall"] == pytest.approx(ref[worst]["recall"])


def test_report_html_embeds_every_plot_and_the_run_tables(trained):
    run_dir, _ = trained
    page = (run_dir / "report.html").read_text()
    for name in PLOTS:
        assert f'alt="plots/{name}.png"' in page
        png = (run_dir / "plots" / f"{name}.png").read_bytes()
        assert base64.b64encode(png).decode() in page  # the same image, embedded
    for section in ("Per-class report", "Per-epoch metrics", "Layers", "Summary",
                    "Resolved config"):
        assert section in page
    assert 'src="http' not in page and "<script" not in page  # opens from disk, alone


def test_never_predicted_classes_are_called_out_in_console_and_report(tmp_path):
    # Every training 9 is labelled 4: the model learns never to answer 9.
    folder = make_dataset(tmp_path / "data", n_train=2000, n_test=100)
    labels = read_idx(folder / "train-labels-idx1-ubyte.gz", LABEL_MAGIC).numpy()
    write_idx(folder / "train-labels-idx1-ubyte", np.where(labels == 9, 4, labels), 2049)
    run_dir = tmp_path / "run"
    result = run_main("train", "model=classic", f"data.dir={folder}", "data.val_size=200",
                      "trainer.epochs=1", "report.plots=[confusion]", "trainer.device=cpu",
                      f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    never = run_folder.read_json(run_dir / "summary.json")["test/never_predicted"]
    assert "9" in never
    page = (run_dir / "report.html").read_text()
    for name in never:
        assert f"Class {name} is never predicted" in page
    assert "never predicted on the test set" in result.stdout + result.stderr


def test_evaluate_rebuilds_the_same_confusion_csv(trained):
    run_dir, _ = trained
    before = (run_dir / "confusion.csv").read_text()
    for name in FILES:
        (run_dir / name).unlink()
    result = run_main("evaluate", f"run={run_dir}", "device=cpu")
    assert result.returncode == 0, result.stderr
    assert all((run_dir / name).is_file() for name in FILES)
    assert (run_dir / "confusion.csv").read_text() == before
    evaluation = run_folder.read_json(run_dir / "evaluation.json")
    assert evaluation["test/macro_f1"] == run_folder.read_json(run_dir / "summary.json")[
        "test/macro_f1"]


def test_grouped_classes_survive_the_csv_round_trip(synthetic_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_main("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                      "data.limit=300", "trainer.epochs=1", "report.enabled=false",
                      f"data.classes={GROUPS}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    names = ["{0,6}", "{1,7}", "{2,3,5,8}", "{4,9}"]
    tables = {name: read_csv(run_dir / name) for name in
              ("confusion.csv", "classification.csv", "predictions.csv")}
    for name, rows in tables.items():
        assert all(len(row) == len(rows[0]) for row in rows), name
    confusion = tables["confusion.csv"]
    assert confusion[0] == ["true\\pred", *names] and [r[0] for r in confusion[1:]] == names
    assert sum(int(v) for row in confusion[1:] for v in row[1:]) == 500
    assert [r[0] for r in tables["classification.csv"][1:]] == [*names, "macro avg",
                                                                 "weighted avg"]
    predictions = tables["predictions.csv"]
    assert predictions[0] == ["index", "label", "pred", "confidence"] and len(predictions) == 501
    assert {int(r[1]) for r in predictions[1:]} == {0, 1, 2, 3}
    # model.pt alone is enough to use the model: class names and normalisation travel with it.
    ckpt = torch.load(run_dir / "model.pt", weights_only=True)
    assert ckpt["class_names"] == names
    assert 0 < ckpt["mean"] < 1 and 0 < ckpt["std"] < 1
    model = models.build(saved_config(ckpt["config"]).model, len(ckpt["class_names"]))
    model.load_state_dict(ckpt["model"])
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 4)


# ----------------------------------------------------------------------------- in-process
def synthetic_data(test_labels: np.ndarray | None = None) -> Data:
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 10 if test_labels is None else test_labels

    def split(y):
        images = torch.from_numpy(synthetic_images(y, rng)).unsqueeze(1)
        return Split(images, torch.from_numpy(y).long())

    return Data(train=split(np.arange(20) % 10), val=None, test=split(labels),
                class_names=[str(d) for d in range(10)], mean=0.2, std=0.3)


def fake_run(tmp_path, overrides: list[str], data: Data, preds: np.ndarray | None = None,
             val: bool = True):
    """An untrained model's run folder: predictions.csv and a two-epoch metrics.jsonl."""
    cfg = compose_config(overrides)
    model = models.build(cfg.model, data.num_classes)
    logits = predict(model, data.test, data, 1000)
    if preds is not None:  # chosen predictions: logits that argmax to them
        logits = torch.nn.functional.one_hot(torch.as_tensor(preds), 10).float() * 5
    write_predictions(tmp_path / "predictions.csv", data.test.labels, logits)
    for epoch in (1, 2):
        record = {"epoch": epoch, "train/loss": 1.0 / epoch, "train/acc": 0.5 * epoch}
        if val:
            record.update({"val/loss": 1.1 / epoch, "val/acc": 0.4 * epoch})
        run_folder.append_jsonl(tmp_path / "metrics.jsonl", record)
    return cfg, model


def write(tmp_path, overrides, data=None, preds=None, val=True) -> tuple[dict, str]:
    data = data or synthetic_data()
    cfg, model = fake_run(tmp_path, overrides, data, preds, val)
    keys = run_report.write_run_files(tmp_path, cfg, model, data, {"test/loss": 2.3})
    page = (tmp_path / "report.html").read_text() if (tmp_path / "report.html").exists() else ""
    return keys, page


def view_of(overrides: list[str], data: Data | None = None) -> run_figures.RunView:
    data = data or synthetic_data()
    cfg = compose_config(overrides)
    model = models.build(cfg.model, data.num_classes)
    preds = predict(model, data.test, data, 1000).argmax(1).numpy()
    labels = data.test.labels.numpy()
    return run_figures.RunView(cfg=cfg, settings=report_settings(cfg),
                               label=run_report.run_label(cfg), model=model, data=data,
                               records=[],
                               predictions=Predictions(labels, preds, np.ones(len(preds))),
                               confusion=np.zeros((10, 10), int), rows=[], summary={})


def png_size(fig) -> tuple[int, int]:
    image = Image.open(io.BytesIO(plots.to_png(fig)))
    return image.size


@pytest.mark.parametrize("model", ["conv5x5", "keras", "classic", "tiny", "mobilenet"])
def test_filters_and_feature_maps_of_every_model(model):
    view = view_of([f"model={model}"])
    convs = probes.conv_layers(view.model)
    first = run_figures.FIGURES["filters_first"](view)
    last = run_figures.FIGURES["filters_last"](view)
    maps = run_figures.FIGURES["feature_maps"](view)
    assert png_size(first)[0] == png_size(last)[0] == plots.FILTER_WIDTH * plots.DPI
    assert png_size(maps)[0] == plots.FEATURE_WIDTH * plots.DPI
    assert convs[0][0] in first.get_suptitle()
    stages = [name for name, _ in view.model.features.named_children()]
    assert len(maps.axes) == 1 + len(stages)  # the input, then a row per stage
    assert [ax.get_title(loc="left").split()[0] for ax in maps.axes] == ["input", *stages]
    if model == "mobilenet":
        # Its last conv is a 1x1 pointwise one; the last with a spatial kernel is depthwise.
        assert "depthwise" in last.get_suptitle()
    if model in ("conv5x5", "keras"):
        assert "mean over" in last.get_suptitle()


def test_embedding_of_a_two_unit_bottleneck_is_drawn_raw():
    fig = run_figures.FIGURES["embedding"](view_of(["model=conv5x5", "model.features=2"]))
    assert "raw 2-D features" in fig.get_suptitle() and "head.bottleneck" in fig.get_suptitle()
    assert fig.axes[0].get_xlabel() == "feature 1"


def test_embedding_of_a_wider_layer_uses_tsne():
    fig = run_figures.FIGURES["embedding"](view_of(["model=classic"]))
    assert "t-SNE of head.act (50 units) for 60 test images" in fig.get_suptitle()
    assert len(fig.axes[0].get_legend().get_texts()) == 10


def test_model_without_conv_layers_skips_those_plots_with_a_note(tmp_path):
    _, page = write(tmp_path, ["model=keras", "model.conv_layers=0",
                               "report.plots=[filters_first,filters_last,feature_maps,errors]"])
    for name in ("filters_first", "filters_last", "feature_maps"):
        assert not (tmp_path / "plots" / f"{name}.png").exists()
        assert f"plots/{name}.png skipped: model keras has no conv layer" in page
    assert (tmp_path / "plots" / "errors.png").is_file()


def test_run_without_val_split_notes_it_and_still_draws_curves(tmp_path):
    _, page = write(tmp_path, ["model=tiny", "data.val_size=0", "report.plots=[loss]"],
                    val=False)
    assert "No validation split" in page
    assert (tmp_path / "plots" / "loss.png").is_file()


def test_single_class_test_set_does_not_crash(tmp_path):
    data = synthetic_data(np.full(30, 4))
    keys, page = write(tmp_path, ["model=tiny"], data=data)
    assert keys["test/worst_class"] == "4"
    assert "The test set has no image of class 0" in page
    cm = read_csv(tmp_path / "confusion.csv")
    assert sum(int(v) for row in cm[1:] for v in row[1:]) == 30
    json.dumps(keys, allow_nan=False)


def test_a_class_never_predicted_is_called_out(tmp_path, caplog):
    data = synthetic_data()
    labels = data.test.labels.numpy()
    preds = np.where(labels == 7, 1, labels)
    keys, page = write(tmp_path, ["model=tiny", "report.plots=[confusion]"], data=data,
                       preds=preds)
    assert keys["test/never_predicted"] == ["7"]
    assert keys["test/worst_class"] == "7" and keys["test/worst_class_recall"] == 0
    assert "Class 7 is never predicted" in page
    with caplog.at_level(logging.WARNING):
        log_class_findings(keys)
    assert "class 7 is never predicted" in caplog.text


def test_a_run_without_mistakes_skips_the_error_gallery_with_a_note(tmp_path):
    data = synthetic_data()
    _, page = write(tmp_path, ["model=tiny", "report.plots=[errors,correct]"], data=data,
                    preds=data.test.labels.numpy())
    assert not (tmp_path / "plots" / "errors.png").exists()
    assert "plots/errors.png skipped: no misclassified test image" in page
    assert (tmp_path / "plots" / "correct.png").is_file()


@pytest.mark.parametrize("index", [0, 17])
def test_sample_index_picks_the_feature_map_digit(index):
    view = view_of(["model=tiny", f"report.sample_index={index}"])
    fig = run_figures.FIGURES["feature_maps"](view)
    label = view.data.class_names[view.predictions.labels[index]]
    assert f"feature maps of test image {index} (true {label}," in fig.get_suptitle()
    drawn = np.asarray(fig.axes[0].images[0].get_array())[:28, :28]  # the input row
    image = view.data.test.images[index, 0].numpy().astype(float)
    np.testing.assert_allclose(drawn, plots.mosaic(image[None], cols=1))


def test_sample_index_beyond_the_test_set_is_skipped_with_a_note(tmp_path):
    _, page = write(tmp_path, ["model=tiny", "report.plots=[feature_maps]",
                               "report.sample_index=60"])
    assert "plots/feature_maps.png skipped: report.sample_index=60 is beyond the test set" in page
    with pytest.raises(UserError, match="report.sample_index=-1 is out of range"):
        validate(compose_config(["report.sample_index=-1"]))


def test_report_disabled_writes_only_the_tables(tmp_path):
    keys, page = write(tmp_path, ["model=tiny", "report.enabled=false"])
    assert (tmp_path / "confusion.csv").is_file() and (tmp_path / "classification.csv").is_file()
    assert not (tmp_path / "plots").exists() and not page
    assert "test/macro_f1" in keys


def test_plots_subset_draws_only_those(tmp_path):
    _, page = write(tmp_path, ["model=tiny", "report.plots=[loss,confusion]"])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["confusion.png",
                                                                      "loss.png"]
    assert page.count("data:image/png;base64,") == 2


def test_unknown_plot_names_are_rejected_before_training():
    with pytest.raises(UserError, match="unknown plot curves; choose from loss"):
        validate(compose_config(["report.plots=[loss,curves]"]))
    # The command line's pre-check runs validate: no run folder is made for a bad setting.
    with pytest.raises(UserError, match="report.tsne_samples=0 is out of range: must be >= 1"):
        check_overrides(["report.tsne_samples=0"], multirun=False)


def test_run_label_names_the_model_knobs_that_differ_from_defaults():
    cfg = compose_config(["model=conv5x5", "model.features=2", "trainer.epochs=10"])
    label = run_report.run_label(cfg)
    assert label.startswith("conv5x5 features=2 · adam lr=0.001")
    assert "10 epochs" in label
