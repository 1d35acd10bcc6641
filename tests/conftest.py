"""Shared fixtures: synthetic IDX datasets written to a temp dir, and two CLI runners: one in
this process (fast: torch and Hydra are imported once) and one as a real subprocess (for what
only a process shows: exit codes after signals, output that must not be a traceback)."""

from __future__ import annotations

import gzip
import io
import logging
import os
import struct
import subprocess
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

# One torch thread, here and in every process a test starts (they inherit the variable),
# unless the caller chose otherwise. On a 2-core machine that other processes share (the
# suite's own subprocesses, other people), torch's default of one spinning OpenMP thread
# per core makes small CPU trainings 3-10x slower; one thread loses little when idle.
# Set before torch is imported: OpenMP reads it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_MNIST = os.environ.get("MNISTCNN_DATA_DIR")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU: on a machine without one they are skipped, not failed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> None:
    """Write uint8 data as an IDX file (gzipped when compress)."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw, compresslevel=1)
    path.write_bytes(raw)


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Learnable 28x28 digits: class c lights an 8x8 square at its own place, plus noise."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 4)
        images[i, 2 + 8 * r: 10 + 8 * r, 1 + 7 * col: 8 + 7 * col] = 255
    return images


def make_dataset(folder: Path, n_train: int = 2000, n_test: int = 500, seed: int = 0,
                 compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        write_idx(folder / f"{split}-images-idx3-ubyte", synthetic_images(labels, rng), 2051,
                  compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels.astype(np.uint8), 2049, compress)
    return folder


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """2,000 train / 500 test synthetic images in the standard IDX layout (gzipped)."""
    return make_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def real_mnist_run(tmp_path_factory) -> Path:
    """One epoch of the classic net on real MNIST, trained once for every test that needs a
    model that has seen the real digits."""
    if not REAL_MNIST:
        pytest.skip("MNISTCNN_DATA_DIR is not set")
    run = tmp_path_factory.mktemp("real_mnist") / "run"
    result = run_main("train", "model=classic", "trainer.epochs=1", "report.enabled=false",
                      f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    return run


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m mnistcnn ARGS` as a user would, capturing its output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset it
    return subprocess.run([sys.executable, "-m", "mnistcnn", *args], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def run_main(*args: str, cwd: Path | None = None,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m mnistcnn ARGS` through its entry point in this process, as run_cli does
    in a child, and return the same kind of result: exit code, stdout, stderr. Fast (torch and
    Hydra are imported once), so most CLI tests use it; the state a command leaves in the
    process (Hydra's global instance, the root logger's handlers and level, sys.argv, the
    working folder, warning filters, HYDRA_FULL_ERROR) is put back, so calls do not see each
    other. What only a process shows (signals, exit codes after them) stays with run_cli."""
    from hydra.core.global_hydra import GlobalHydra

    from mnistcnn.__main__ import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    argv, here, full_error = sys.argv[:], os.getcwd(), os.environ.pop("HYDRA_FULL_ERROR", None)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    try:
        os.environ.update(env or {})
        os.chdir(cwd or ROOT)
        sys.argv = ["mnistcnn"]  # `train` hands its arguments on to Hydra in sys.argv
        with warnings.catch_warnings(), redirect_stdout(out), redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as e:
                if isinstance(e.code, str):  # as the interpreter does: the text, then 1
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()  # e.g. Hydra's train.log
        root.handlers[:] = handlers
        root.setLevel(level)
        sys.argv = argv
        os.chdir(here)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.environ.pop("HYDRA_FULL_ERROR", None)
        if full_error is not None:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    return subprocess.CompletedProcess(["mnistcnn", *args], code, out.getvalue(), err.getvalue())


# A valid 1x1 PNG: what plots.to_png returns under `no_png_encoding`.
TINY_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010800000000"
                         "3a7e9b550000000a49444154789c63600000000200015d0b2a3a0000000049454e44ae426082")


@pytest.fixture
def no_png_encoding(monkeypatch):
    """Figures are built (their titles, names and the pages that refer to them are the real
    ones) but not rendered to PNG, which is most of a figure's cost; for tests of books and
    pages, not of the pictures (test_plots.py and test_report.py check those)."""
    from mnistcnn.reporting import plots

    monkeypatch.setattr(plots, "to_png", lambda fig, *a, **k: TINY_PNG)


@pytest.fixture
def cli():
    """run_main, for tests that take their runner as a fixture."""
    return run_main
