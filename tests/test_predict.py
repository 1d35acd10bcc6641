"""`predict`: MNIST-style preprocessing of image files (synthetic shapes), the command on a
synthetic run with class groups, and real test digits on a model trained on real MNIST."""

from __future__ import annotations

import csv
import io
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from conftest import REAL_MNIST, run_main
from PIL import Image

from mnistcnn.data import digits
from mnistcnn.data.dataset import read_idx


def blob(height=400, width=300, top=40, left=200, h=120, w=40) -> np.ndarray:
    """White ink on black, grey levels in [0, 1]: an off-centre L (a bar and a foot)."""
    image = np.zeros((height, width), np.float32)
    image[top: top + h, left: left + w // 2] = 1.0
    image[top + h - w // 2: top + h, left: left + w] = 1.0
    return image


def ink_box(image: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(image > 0)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_the_centre_of_mass_lands_where_mnist_has_it():
    out = digits.to_mnist(blob())
    assert out.shape == (28, 28) and out.dtype == np.uint8
    cy, cx = digits.centre_of_mass(out.astype(float))
    assert abs(cy - 14) <= 0.6 and abs(cx - 14) <= 0.6


def test_the_longer_side_of_the_ink_is_scaled_to_20_pixels():
    for h, w in ((120, 40), (30, 90), (6, 3)):  # tall, wide, and smaller than the box
        out = digits.to_mnist(blob(h=h, w=w))
        rows, cols = ink_box(out)
        longer, shorter = (rows, cols) if h >= w else (cols, rows)
        # LANCZOS rings a pixel beyond the box at most.
        assert 20 <= longer <= 22, (h, w, rows, cols)
        assert shorter < longer


def test_dark_ink_on_light_paper_is_inverted():
    light = digits.to_mnist(1 - blob())
    dark = digits.to_mnist(blob())
    assert np.array_equal(light, dark) and dark.max() == 255 and dark[0, 0] == 0


def test_colour_and_transparent_files_read_as_their_grey_ink(tmp_path):
    ink = blob()
    rgb = np.stack([230 - 200 * ink, 210 - 180 * ink, 250 - 150 * ink], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "paper.jpg", quality=95)
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[..., 3] = np.uint8(255 * ink)  # black ink, transparent elsewhere
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.uint8(255 * ink)).save(tmp_path / "grey.bmp")
    reference = digits.load(tmp_path / "grey.bmp")
    for name in ("paper.jpg", "alpha.png"):
        out = digits.load(tmp_path / name)
        assert np.abs(out.astype(int) - reference).mean() < 8, name


def test_inputs_that_give_no_digit_say_why(tmp_path):
    Image.fromarray(np.full((50, 50), 200, np.uint8)).save(tmp_path / "blank.png")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty").mkdir()
    with pytest.raises(digits.Unreadable, match="blank image"):
        digits.load(tmp_path / "blank.png")
    read, images, problems = digits.read_all(
        [tmp_path / "text.png", tmp_path / "empty", tmp_path / "missing.png"])
    assert read == [] and images.shape == (0, 28, 28)
    assert problems == [f"{tmp_path / 'text.png'}: not a readable image "
                        f"(UnidentifiedImageError); pass PNG, JPEG or BMP files",
                        f"{tmp_path / 'empty'}: no png, jpg, jpeg, bmp file in this folder",
                        f"{tmp_path / 'missing.png'}: no such file or folder"]


def png_claiming(path, width: int, height: int) -> None:
    """A small PNG whose header claims width x height pixels, as a huge image's would."""
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", width, height)  # IHDR's width and height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # and its checksum
    path.write_bytes(bytes(png))


def test_a_huge_image_is_skipped_like_any_unreadable_one(tmp_path):
    png_claiming(tmp_path / "huge.png", 20000, 12000)  # past twice PIL's limit: an error
    png_claiming(tmp_path / "big.png", 10000, 10000)  # past the limit: a warning in PIL
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning escapes either
        read, _, problems = digits.read_all([tmp_path / "huge.png", tmp_path / "big.png"])
    assert read == [] and len(problems) == 2
    for name, problem in zip(("huge.png", "big.png"), problems, strict=True):
        assert problem.startswith(f"{tmp_path / name}: too large to read safely"), problem


# ----------------------------------------------------------------------------- the command
GROUPS = "data.classes={0:[0,6],1:[1,7],2:[2,3,5,8],3:[4,9]}"


@pytest.fixture(scope="module")
def grouped_run(synthetic_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("grouped") / "run"
    result = run_main("train", f"data.dir={synthetic_dir}", "data.val_size=200", "model=tiny",
                      "trainer.epochs=1", "trainer.device=cpu", "report.enabled=false", GROUPS,
                      f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    return run


def synthetic_digit_files(folder, synthetic_dir, n=3):
    """The first n synthetic test images as black-on-white PNGs, 3x enlarged."""
    images = read_idx(synthetic_dir / "t10k-images-idx3-ubyte.gz", 2051).numpy()
    folder.mkdir()
    for i in range(n):
        Image.fromarray(255 - images[i]).resize((84, 84)).save(folder / f"digit{i}.png")


def test_predict_prints_writes_and_shows_and_skips_bad_inputs(grouped_run, synthetic_dir,
                                                              cli, tmp_path):
    synthetic_digit_files(tmp_path / "good", synthetic_dir)
    (tmp_path / "good" / "broken.png").write_bytes(b"\x89PNG but cut short")
    png_claiming(tmp_path / "good" / "huge.png", 20000, 12000)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "preds.csv"
    result = cli("predict", f"run={grouped_run}", "device=cpu", str(tmp_path / "good"),
                 str(tmp_path / "empty"), "--out", str(out), "--show")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in result.stderr
    assert "broken.png: not a readable image" in lines[0]
    assert lines[1].startswith(f"warning: {tmp_path / 'good' / 'huge.png'}: too large")
    assert lines[1].endswith("; skipped")
    assert f"{tmp_path / 'empty'}: no png" in lines[2]
    names = json.loads((grouped_run / "summary.json").read_text())
    assert names["status"] == "completed"
    lines = [line for line in result.stdout.splitlines() if "top-3:" in line]
    assert len(lines) == 3
    for i, line in enumerate(lines):
        file, pred, conf, _, *top = line.split()
        assert file.endswith(f"digit{i}.png") and pred.startswith("{") and conf.endswith("%")
        assert len(top) == 6 and top[0] == pred  # three (class, probability) pairs
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["pred"] for r in rows] == [line.split()[1] for line in lines]
    assert all(float(r["confidence"]) >= float(r["top2_confidence"]) for r in rows)
    sheet = out.with_suffix(".png")
    assert sheet.is_file() and Image.open(sheet).size[0] > 200


def test_predict_with_nothing_readable_is_one_line_and_exit_2(grouped_run, tmp_path):
    (tmp_path / "a.png").write_text("text")
    result = run_main("predict", f"run={grouped_run}", str(tmp_path / "a.png"),
                      str(tmp_path / "nothing"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("error: no digit could be read")
    assert result.stdout == ""


def test_predict_without_a_run_is_a_usage_line(cli, tmp_path):
    result = cli("predict", str(tmp_path))
    assert result.returncode == 2 and "usage: python -m mnistcnn predict run=PATH" in \
        result.stderr


@pytest.mark.parametrize("typed, says", [
    (["device=tpu"], "error: device=tpu is not a device; use device=auto|cpu|cuda"),
    (["device=cuda"],
     "error: device=cuda but no CUDA GPU is available; use device=cpu or device=auto"),
    (["--out", "{tmp}/no/such/folder/p.csv"],
     "error: cannot write {tmp}/no/such/folder/p.csv: No such file or directory; free disk "
     "space or pass --out FILE.csv in a folder you can write"),
])
def test_predict_errors_name_what_the_user_typed(typed, says, grouped_run, synthetic_dir, cli,
                                                  tmp_path):
    if typed == ["device=cuda"] and torch.cuda.is_available():
        pytest.skip("device=cuda is no error on a machine with a GPU")
    synthetic_digit_files(tmp_path / "good", synthetic_dir, n=1)
    typed = [t.format(tmp=tmp_path) for t in typed]
    result = cli("predict", f"run={grouped_run}", str(tmp_path / "good"), *typed)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [says.format(tmp=tmp_path)]
    assert "trainer.device" not in result.stderr and "hydra" not in result.stderr


# ----------------------------------------------------------------------------- real digits
def real_variants(folder, images: np.ndarray, labels: np.ndarray) -> None:
    """Each real test digit four ways, as people hand them in: dark on light paper,
    off-centre on a bigger canvas, enlarged, and coloured (JPEG)."""
    for i, (a, y) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(255 - a).save(folder / f"{i}_inverted_{y}.png")
        canvas = np.zeros((60, 90), np.uint8)
        canvas[4:32, 55:83] = a
        Image.fromarray(canvas).save(folder / f"{i}_shifted_{y}.png")
        Image.fromarray(a).resize((200, 200), Image.Resampling.BICUBIC).save(
            folder / f"{i}_scaled_{y}.png")
        ink = a.astype(np.float32) / 255
        rgb = np.stack([200 - 180 * ink, 220 - 200 * ink, 240 - 120 * ink], -1)
        Image.fromarray(rgb.astype(np.uint8)).resize((90, 90)).save(folder / f"{i}_rgb_{y}.jpg")


@pytest.mark.slow
def test_real_test_digits_as_files_are_recognised(real_mnist_run, cli, tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    n = 20
    images = read_idx(f"{REAL_MNIST}/t10k-images-idx3-ubyte.gz", 2051).numpy()[:n]
    labels = read_idx(f"{REAL_MNIST}/t10k-labels-idx1-ubyte.gz", 2049).numpy()[:n]
    real_variants(folder, images, labels)
    result = cli("predict", f"run={real_mnist_run}", str(folder), "--out",
                 str(tmp_path / "p.csv"))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * n
    right = {}
    for row in rows:
        _, kind, label = row["file"].rsplit("/", 1)[1].rsplit(".", 1)[0].split("_")
        right.setdefault(kind, []).append(row["pred"] == label)
    # A 1-epoch classic net scores about 97% on the test set as MNIST stores it.
    assert sum(map(sum, right.values())) >= 0.95 * len(rows), right
    assert all(sum(hits) >= 0.9 * n for hits in right.values()), right
