"""Malformed input through the real CLI: exit code 2, one line naming the problem and the
fix, no traceback, and an earlier run left byte for byte as it was."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, run_cli, run_main, write_idx


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def damaged(root: Path, name: str, damage) -> Path:
    folder = make_dataset(root / name, n_train=100, n_test=20)
    damage(folder)
    return folder


def truncate(d):
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:5000]))


def not_gzip(d):
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b this is not gzip data")


def wrong_magic(d):
    (d / "t10k-images-idx3-ubyte.gz").write_bytes((d / "t10k-labels-idx1-ubyte.gz")
                                                  .read_bytes())


def labels_out_of_range(d):
    write_idx(d / "train-labels-idx1-ubyte", np.full(100, 11, np.uint8), 2049)


def counts_disagree(d):
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(90, np.uint8), 2049)


def empty(d):
    for p in d.iterdir():
        p.unlink()


DATA_CASES = [("truncated", truncate, "truncated"), ("not_gzip", not_gzip, "cannot read"),
              ("wrong_magic", wrong_magic, "not an IDX file of the expected kind"),
              ("labels", labels_out_of_range, "has label 11; labels must be 0-9"),
              ("counts", counts_disagree, "100 images"), ("empty", empty, "does not hold")]


CONFIG_CASES = [
    ("wrong type: lr", ["optim.lr=abc"], "could not be converted to Float"),
    ("wrong type: epochs", ["trainer.epochs=1.5"], "could not be converted to Integer"),
    ("wrong type: batch size", ["trainer.batch_size=big"], "could not be converted to Integer"),
    ("wrong type: batchnorm", ["model.batchnorm=maybe"], "'maybe' is not a valid bool"),
    ("negative lr", ["optim.lr=-0.1"], "optim.lr=-0.1 is out of range"),
    ("batch size 0", ["trainer.batch_size=0"], "trainer.batch_size=0 is out of range"),
    ("epochs 0", ["trainer.epochs=0"], "trainer.epochs=0 is out of range"),
    ("dropout 1.5", ["model.dropout=1.5"], "model.dropout=1.5 is out of range"),
    ("resplit above 1", ["data.resplit=1.5"], "data.resplit=1.5 is out of range"),
    ("resplit 0", ["data.resplit=0"], "data.resplit=0.0 is out of range"),
    ("label smoothing 1", ["loss.label_smoothing=1"], "loss.label_smoothing=1.0 is out of range"),
    ("rotation 500", ["data.augment.rotation=500"], "data.augment.rotation=500.0 is out of range"),
    ("unknown model", ["model=resnet"], "unknown config option 'model/resnet'"),
    ("unknown optimizer", ["optim=lbfgs"], "unknown config option 'optim/lbfgs'"),
    ("unknown schedule", ["sched=warmup"], "unknown config option 'sched/warmup'"),
    ("unknown loss", ["loss.name=hinge"], "expected one of [cross_entropy, nll, mse]"),
    ("unknown activation", ["model.activation=swish"], "Invalid value 'swish'"),
    ("unknown model key", ["model.widht=3"], "unknown config key 'model.widht'"),
    ("unknown top key", ["trainer.lr=0.1"], "unknown config key 'trainer.lr'"),
    ("knob of another model", ["model=tiny", "model.hidden=50"], "unknown config key"),
    ("impossible depth", ["model=keras", "model.conv_layers=5"], "stage 'conv4' gets a 1x1"),
    ("impossible kernel", ["model=classic", "model.kernel=20"], "stage 'conv2'"),
    ("grouping misses", ["data.classes={0:[0,1,2,3,4],1:[5,6,7,8]}"], "misses digits [9]"),
    ("grouping repeats", ["data.classes={0:[0,1,2,3,4,5],1:[5,6,7,8,9]}"], "repeats digits [5]"),
    ("no GPU", ["trainer.device=cuda"], "no CUDA GPU is available"),
    ("bad device", ["trainer.device=tpu"], "Invalid value 'tpu'"),
    ("bad value in sweep", ["-m", "optim.lr=0.1,-2"], "optim.lr=-2.0 is out of range"),
]


def written(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def run_saved_as(tmp: Path, text: str) -> Path:
    """A folder that looks like a run but whose saved config is damaged."""
    written(tmp / "damaged" / ".hydra" / "config.yaml", text)
    return tmp / "damaged"


def unreadable_images(tmp: Path) -> list[str]:
    """Images predict cannot read: one that is not an image, one that is not there."""
    return [str(written(tmp / "digits" / "a.png", "not a png")), str(tmp / "digits" / "b.png")]


# What each case is handed: the earlier run, a checkpoint of the wrong model, a file where a
# folder should be, the synthetic data, and a fresh folder of its own (tmp).
OTHER_CASES = {
    "val_size too big": (lambda p, tmp: ["train", f"data.dir={p.synthetic}", "data.val_size=2000",
                                         f"hydra.run.dir={tmp / 'runs' / 'val'}"],
                         "data.val_size=2000 leaves no training images"),
    "bad value aimed at the earlier run": (lambda p, tmp: ["train", "optim.lr=-1",
                                                           f"hydra.run.dir={p.earlier}"],
                                           "out of range"),
    "unwritable output folder": (lambda p, tmp: ["train", f"data.dir={p.synthetic}",
                                                 f"hydra.run.dir={p.a_file / 'run'}"], "a_file"),
    "evaluate a non-run": (lambda p, tmp: ["evaluate", f"run={tmp}"], "is not a finished run"),
    "evaluate without run=": (lambda p, tmp: ["evaluate", str(p.earlier)],
                              "usage: python -m mnistcnn"),
    "evaluate another model's weights": (lambda p, tmp: ["evaluate", f"run={p.mixed}"],
                                         "checkpoint is from a different model"),
    "resume a non-run": (lambda p, tmp: ["train", f"resume={tmp}"], "is not a run folder"),
    "resume with other overrides": (lambda p, tmp: ["train", f"resume={p.earlier}",
                                                    "optim.lr=0.1"],
                                    "resume=PATH continues a run with its own config"),
    "unknown command": (lambda p, tmp: ["fit"], "unknown command 'fit'"),
    "study file not YAML": (lambda p, tmp: ["studies", str(written(tmp / "bad.yaml",
                                                                   "study: [unclosed\n")),
                                            "--out", str(tmp / "runs" / "book")],
                            "study file {tmp}/bad.yaml is not valid YAML (line 2, column 1: "
                            "expected ',' or ']', but got '<stream end>', while parsing a flow "
                            "sequence that starts at line 1, column 8); fix the file"),
    "study file not YAML, dry run": (lambda p, tmp: ["studies", str(written(
        tmp / "bad.yaml", "study: [unclosed\n")), "--dry-run"], "bad.yaml is not valid YAML"),
    "study file not a mapping": (lambda p, tmp: ["studies", str(written(
        tmp / "listed.yaml", "- study\n")), "--dry-run"],
        "study file {tmp}/listed.yaml holds a list, not a mapping of keys"),
    "unknown MLflow store scheme": (
        lambda p, tmp: ["train", "logger=mlflow", "logger.tracking_uri=nosuchscheme://x/y",
                        f"data.dir={p.synthetic}", "data.limit=200", "trainer.epochs=1",
                        "trainer.device=cpu", f"hydra.run.dir={tmp / 'runs' / 'run'}"],
        "logger.tracking_uri=nosuchscheme://x/y: MLflow knows no store for the scheme "
        "'nosuchscheme'; use a SQLite file (e.g. sqlite:///outputs/mlflow.db)"),
    "rerun of a saved config that is not YAML": (
        lambda p, tmp: ["train", f"rerun={run_saved_as(tmp, 'model: {name: [tiny')}",
                        "trainer.device=cpu", f"hydra.run.dir={tmp / 'runs' / 'run'}"],
        "error: {tmp}/damaged/.hydra/config.yaml is not valid YAML (line 1, column 20: "
        "expected ',' or ']', but got '<stream end>'"),
    "rerun of a saved config that is no mapping": (
        lambda p, tmp: ["train", f"rerun={run_saved_as(tmp, '- model')}", "trainer.device=cpu",
                        f"hydra.run.dir={tmp / 'runs' / 'run'}"],
        "config.yaml is not a run's saved config (a mapping with model, data, optim, ...); "
        "restore it, or pass rerun=PATH of another folder written by `train`"),
    "resume of a run whose saved config is not YAML": (
        lambda p, tmp: ["train", f"resume={run_saved_as(tmp, 'model: {name: [tiny')}"],
        "error: {tmp}/damaged/.hydra/config.yaml is not valid YAML (line 1, column 20: "
        "expected ',' or ']', but got '<stream end>'"),
    # The run and the device are checked before the images: one line about them, not a
    # warning per image and an error about the images.
    "predict: mistyped run, unreadable images": (
        lambda p, tmp: ["predict", f"run={tmp / 'nosuch'}", *unreadable_images(tmp), "--out",
                        str(tmp / "runs" / "p.csv")],
        "error: {tmp}/nosuch does not exist; pass run=PATH of a folder written by `train`"),
    "predict: a folder with no model.pt, unreadable images": (
        lambda p, tmp: ["predict", f"run={p.earlier.parent}", *unreadable_images(tmp)],
        "is not a finished run (no model.pt)"),
    "predict: bad device, unreadable images": (
        lambda p, tmp: ["predict", f"run={p.earlier}", "device=tpu", *unreadable_images(tmp)],
        "error: device=tpu is not a device; use device=auto|cpu|cuda"),
}
# These are refused before anything is made: no run, book or output folder at all.
BEFORE_ANY_FOLDER = {"study file not YAML", "study file not YAML, dry run",
                     "study file not a mapping", "unknown MLflow store scheme",
                     "rerun of a saved config that is not YAML",
                     "rerun of a saved config that is no mapping",
                     "predict: mistyped run, unreadable images",
                     "predict: a folder with no model.pt, unreadable images",
                     "predict: bad device, unreadable images"}
CASES = ([name for name, _, _ in CONFIG_CASES] + [f"data: {name}" for name, _, _ in DATA_CASES]
         + list(OTHER_CASES))
# Two cases run as real processes (marked slow): the exit code and the absence of a
# traceback are what a process shows; one case per way out (Hydra's compose, the job).
IN_A_PROCESS = {"unknown model", "data: truncated"}


@dataclass
class Places:
    earlier: Path  # a finished run that no bad input may touch
    before: dict[str, str]  # its files' digests
    synthetic: Path
    mixed: Path  # a checkpoint whose weights belong to another model than its config says
    a_file: Path  # a file where a folder should be
    damaged: dict[str, Path]  # a data folder per DATA_CASES entry


@pytest.fixture(scope="module")
def places(synthetic_dir, tmp_path_factory) -> Places:
    root = tmp_path_factory.mktemp("bad_input")
    earlier = root / "earlier"
    result = run_main("train", "model=tiny", f"data.dir={synthetic_dir}", "data.val_size=200",
                      "data.limit=300", "trainer.epochs=1", "report.enabled=false",
                      f"hydra.run.dir={earlier}")
    assert result.returncode == 0, result.stderr
    (root / "mixed").mkdir()
    ckpt = torch.load(earlier / "model.pt", weights_only=True)
    ckpt["config"]["model"] = {**ckpt["config"]["model"], "channels": [8, 8, 8]}
    torch.save(ckpt, root / "mixed" / "model.pt")
    (root / "a_file").write_text("not a folder")
    return Places(earlier, digest(earlier), synthetic_dir, root / "mixed", root / "a_file",
                  {name: damaged(root / "data", name, fn) for name, fn, _ in DATA_CASES})


def case(name: str, p: Places, tmp: Path) -> tuple[list[str], str]:
    """The command line of a case and the text its one error line must hold."""
    keep_out = [f"hydra.run.dir={tmp / 'runs' / 'run'}", f"hydra.sweep.dir={tmp / 'sweeps'}"]
    for config_name, args, message in CONFIG_CASES:
        if name == config_name:
            return ["train", *args, *keep_out], message
    for data_name, _, message in DATA_CASES:
        if name == f"data: {data_name}":
            return ["train", f"data.dir={p.damaged[data_name]}", "data.val_size=10",
                    *keep_out], message
    make, message = OTHER_CASES[name]
    return make(p, tmp), message.format(tmp=tmp)


def test_there_are_51_bad_inputs():  # docs/robustness.md states the count
    assert len(CASES) == len(set(CASES)) == 52
    assert BEFORE_ANY_FOLDER <= set(CASES)


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow)
                                  if name in IN_A_PROCESS else name for name in CASES])
def test_a_bad_input_is_one_line_and_exit_2(name, places, cli, tmp_path):
    if name == "no GPU" and torch.cuda.is_available():
        pytest.skip("trainer.device=cuda is no error on a machine with a GPU "
                    "(tests/test_cli.py runs on it there)")
    if name == "unknown MLflow store scheme":
        pytest.importorskip("mlflow", reason="logger=mlflow needs the mlflow extra")
    args, message = case(name, places, tmp_path)
    result = run_cli(*args, cwd=tmp_path) if name in IN_A_PROCESS else cli(*args, cwd=tmp_path)
    err = result.stderr.strip()
    assert result.returncode == 2, err[-600:]
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err[-600:]
    assert message in err and "Traceback" not in err + result.stdout
    assert digest(places.earlier) == places.before
    for run_dir in (tmp_path / "runs").glob("*"):  # no run folder that looks complete
        assert not (run_dir / "model.pt").exists()
    if name in BEFORE_ANY_FOLDER:
        assert not (tmp_path / "runs").exists() and result.stdout == ""
        assert not (tmp_path / "outputs").exists()
