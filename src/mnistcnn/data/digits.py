"""Image files -> 28x28 digits as MNIST made them, for `predict`.

MNIST's digits are white ink on black, the ink's bounding box scaled to fit 20x20
(aspect kept), pasted into 28x28 so that the ink's centre of mass is the centre.
A photo or a drawing in any size or colour goes through the same steps here; the
run's normalisation comes later (data.prepare), as for the test set.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SIDE, BOX = 28, 20  # MNIST's canvas and the box its ink was scaled into
INK = 0.15  # fraction of the ink's full strength that counts as ink when cropping


class Unreadable(Exception):
    """An input that gives no digit; the message says why, for a one-line note."""


def read_grey(path: Path) -> np.ndarray:
    """The image as float grey levels in [0, 1] (transparent pixels count as white paper)."""
    try:
        # An image past PIL's size limit would take gigabytes to decode (it may be a
        # decompression bomb): below twice the limit PIL only warns, so the warning is
        # raised too, and either way the file is one more unreadable input.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            image.load()
            if image.mode in ("RGBA", "LA", "P"):
                image = image.convert("RGBA")
                paper = Image.new("RGBA", image.size, "white")
                image = Image.alpha_composite(paper, image)
            grey = image.convert("L")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Unreadable(f"too large to read safely (more than {Image.MAX_IMAGE_PIXELS:,} "
                         f"pixels); scale it down, a digit needs only 28x28") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise Unreadable(f"not a readable image ({type(e).__name__}); pass PNG, JPEG or "
                         f"BMP files") from e
    return np.asarray(grey, dtype=np.float32) / 255


def ink_on_black(grey: np.ndarray) -> np.ndarray:
    """Light ink on a black background scaled to [0, 1]: inverted when the border (the
    paper) is light, the paper's level subtracted, the strongest ink stretched to 1."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 0.5:
        grey, border = 1 - grey, 1 - border
    paper, top = float(np.median(border)), float(grey.max())
    if top - paper < 0.1:
        raise Unreadable("blank image: no ink stands out from the background")
    return np.clip((grey - paper) / (top - paper), 0, 1)


def to_mnist(grey: np.ndarray) -> np.ndarray:
    """Grey levels [H, W] in [0, 1] (any polarity) -> uint8 [28, 28] as in MNIST."""
    ink = ink_on_black(grey)
    rows, cols = np.nonzero(ink > INK)
    ink = ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    h, w = ink.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # LANCZOS averages when it shrinks, as MNIST's anti-aliased scaling did.
    box = Image.fromarray(np.uint8(np.round(ink * 255))).resize(size, Image.Resampling.LANCZOS)
    return paste_centred(np.asarray(box, dtype=np.float32))


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    total = image.sum()
    ys, xs = np.indices(image.shape)
    return float((ys * image).sum() / total), float((xs * image).sum() / total)


def paste_centred(box: np.ndarray) -> np.ndarray:
    """Put `box` into a 28x28 black canvas with its centre of mass at row and column 14
    (pixel indices), where MNIST's digits have theirs (measured: mean 13.99, 14.00 over
    2,000 test digits); ink pushed past an edge is cut off."""
    cy, cx = centre_of_mass(box)
    top, left = round(SIDE / 2 - cy), round(SIDE / 2 - cx)
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    h, w = box.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, SIDE), min(left + w, SIDE)
    canvas[y0:y1, x0:x1] = box[y0 - top: y1 - top, x0 - left: x1 - left]
    return np.uint8(np.clip(np.round(canvas), 0, 255))


def load(path: Path) -> np.ndarray:
    """One image file -> uint8 [28, 28]; raises Unreadable with the reason."""
    return to_mnist(read_grey(path))


def read_all(paths: Iterable[str | Path]) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files read, their digits uint8 [N, 28, 28], one line per path that gave none), in
    the order given; a folder gives its image files, sorted, without recursing."""
    read, images, problems = [], [], []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not inside:
                problems.append(f"{path}: no {', '.join(s[1:] for s in SUFFIXES)} file in "
                                f"this folder")
        elif path.is_file():
            inside = [path]
        else:
            inside = []
            problems.append(f"{path}: no such file or folder")
        for file in inside:
            try:
                images.append(load(file))
                read.append(file)
            except Unreadable as e:
                problems.append(f"{file}: {e}")
    return read, np.stack(images) if images else np.zeros((0, SIDE, SIDE), np.uint8), problems
