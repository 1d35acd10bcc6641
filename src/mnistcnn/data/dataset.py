"""MNIST-format data: IDX reading, locating files, splits, class groups, batches, augmentation.

Every split is one uint8 tensor on the training device; a batch is an index
slice of a seeded permutation, normalised (and, for training, augmented) on
the device. There is no per-sample Dataset or DataLoader: that is where the
textbook pipeline spends its time.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mnistcnn.base.config import choice
from mnistcnn.base.config_checks import validate_classes
from mnistcnn.base.errors import UserError

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Where each dataset may already lie, besides data.dir / ./data: env var, torchvision's
# folder name under ./data, and a system folder (Debian's dataset packages).
SOURCES = {
    "mnist": {"env": "MNISTCNN_DATA_DIR", "torchvision": "MNIST", "system": None},
    "fashion_mnist": {"env": "MNISTCNN_FASHION_DIR", "torchvision": "FashionMNIST",
                      "system": "/usr/share/datasets/fashion-mnist"},
}
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Boot"],
}


# ----------------------------------------------------------------------------- IDX files
def read_idx(path: str | Path, expect_magic: int) -> torch.Tensor:
    """Read a (possibly gzipped) IDX file of unsigned bytes into a uint8 tensor."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read {path}: {e}; replace it with a good copy of the file") from e
    if len(raw) < 4:
        raise UserError(f"{path} is empty or truncated; replace it with a good copy")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    magic = struct.unpack(">I", raw[:4])[0]
    if zero != 0 or dtype != 0x08 or magic != expect_magic:
        raise UserError(f"{path} is not an IDX file of the expected kind (magic {magic}, "
                        f"expected {expect_magic}); check that the file names match their content")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated (header cut short); replace it with a good copy")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(dims)
    if len(raw) - header != count:
        raise UserError(f"{path} holds {len(raw) - header} data bytes but its header says "
                        f"{count} ({'x'.join(map(str, dims))}); the file is truncated or corrupt")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path) -> bool:
    return all(_file_in(folder, stem) for stem in FILES.values())


def locate(data_cfg: Any) -> Path:
    """The folder holding the four IDX files: data.dir, else $ENV, else ./data, else download."""
    name = choice(data_cfg.name)
    src = SOURCES[name]
    if data_cfg.dir:
        folder = Path(data_cfg.dir).expanduser()
        if not _complete(folder):
            raise UserError(f"data.dir={folder} does not hold the four {name} IDX files "
                            f"({', '.join(FILES.values())}, .gz or not); fix the path")
        return folder
    candidates = []
    if os.environ.get(src["env"]):
        candidates.append(Path(os.environ[src["env"]]).expanduser())
    candidates += [Path("data"), Path("data") / src["torchvision"] / "raw"]
    if src["system"]:
        candidates.append(Path(src["system"]))
    for folder in candidates:
        if _complete(folder):
            return folder
    return _download(name, candidates)


def _download(name: str, searched: list[Path]) -> Path:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[name]
    made = [p for p in (Path("data"), Path("data") / SOURCES[name]["torchvision"],
                        Path("data") / SOURCES[name]["torchvision"] / "raw") if not p.exists()]
    try:
        cls(root="data", train=True, download=True)
        cls(root="data", train=False, download=True)
    except Exception as e:  # any network or mirror failure means: tell where to put the files
        for folder in reversed(made):  # leave no empty folders behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        looked = ", ".join(str(p) for p in searched)
        raise UserError(f"{name} files not found (looked in {looked}) and the download failed "
                        f"({type(e).__name__}); put {', '.join(FILES.values())} (.gz or not) in "
                        f"a folder and set data.dir or ${SOURCES[name]['env']} to it") from e
    return Path("data") / SOURCES[name]["torchvision"] / "raw"


def read_dataset(folder: Path) -> dict[str, torch.Tensor]:
    """The four tensors, checked for agreeing counts, 28x28 images and labels 0-9."""
    t = {k: read_idx(_file_in(folder, stem), IMAGE_MAGIC if k.endswith("images") else LABEL_MAGIC)
         for k, stem in FILES.items()}
    for split in ("train", "test"):
        images, labels = t[f"{split}_images"], t[f"{split}_labels"]
        where = folder / FILES[f"{split}_images"]
        if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
            raise UserError(f"{where}: images are {tuple(images.shape[1:])}, expected 28x28")
        if labels.dim() != 1 or len(labels) != len(images):
            raise UserError(f"{split} images and labels disagree: {len(images)} images in "
                            f"{where} but {len(labels)} labels in "
                            f"{folder / FILES[f'{split}_labels']}; use matching files")
        if len(labels) and int(labels.max()) > 9:
            raise UserError(f"{folder / FILES[f'{split}_labels']} has label {int(labels.max())}; "
                            f"labels must be 0-9")
    return t


# ----------------------------------------------------------------------------- splits
@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 1, 28, 28] on the device
    labels: torch.Tensor  # int64 [N] on the device

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Data:
    train: Split
    val: Split | None
    test: Split
    class_names: list[str]
    mean: float  # of the training pixels after /255, used to normalise every split
    std: float

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def group_labels(labels: torch.Tensor, classes: Any) -> torch.Tensor:
    """Map digit labels to grouped classes, e.g. {0: [0, 6], 1: [1, 7], ...}."""
    validate_classes(classes)
    table = torch.empty(10, dtype=torch.int64)
    for new, digits in dict(classes).items():
        table[list(digits)] = int(new)
    return table[labels.long()]


def class_names(dataset: str, classes: Any) -> list[str]:
    base = CLASS_NAMES[dataset]
    if not classes:
        return base
    groups = {int(k): list(v) for k, v in dict(classes).items()}
    return ["{" + ",".join(base[d] for d in groups[k]) + "}" for k in sorted(groups)]


def split(tensors: dict[str, torch.Tensor], data_cfg: Any, seed: int) -> tuple[dict, dict, dict]:
    """Train/val/test index sets as (images, labels) pairs on the CPU, following data_cfg."""
    x_tr, y_tr = tensors["train_images"], tensors["train_labels"]
    x_te, y_te = tensors["test_images"], tensors["test_labels"]
    if data_cfg.resplit is not None:
        # Pool all images and cut train/test again at the requested ratio, seeded.
        x_all, y_all = torch.cat([x_tr, x_te]), torch.cat([y_tr, y_te])
        perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))
        n_train = round(len(perm) * data_cfg.resplit)
        x_tr, y_tr = x_all[perm[:n_train]], y_all[perm[:n_train]]
        x_te, y_te = x_all[perm[n_train:]], y_all[perm[n_train:]]
    val_size = data_cfg.val_size
    if val_size >= len(y_tr):
        raise UserError(f"data.val_size={val_size} leaves no training images (the training set "
                        f"has {len(y_tr)}); use a smaller data.val_size or 0")
    # The validation split is the last val_size training images (the 50k/10k/10k protocol).
    n_fit = len(y_tr) - val_size
    train = (x_tr[:n_fit], y_tr[:n_fit])
    val = (x_tr[n_fit:], y_tr[n_fit:]) if val_size else None
    if data_cfg.limit is not None:
        train = (train[0][: data_cfg.limit], train[1][: data_cfg.limit])
    return train, val, (x_te, y_te)


def load(data_cfg: Any, device: torch.device | str = "cpu", seed: int = 0) -> Data:
    """Read, split, group and move to the device: the only data entry point for training."""
    name = choice(data_cfg.name)
    tensors = read_dataset(locate(data_cfg))
    parts = split(tensors, data_cfg, seed)

    def to_split(part):
        images, labels = part
        if data_cfg.classes:
            labels = group_labels(labels, data_cfg.classes)
        return Split(images.unsqueeze(1).contiguous().to(device), labels.long().to(device))

    train, val, test = (to_split(p) if p is not None else None for p in parts)
    pixels = train.images.float().div_(255)
    return Data(train=train, val=val, test=test, class_names=class_names(name, data_cfg.classes),
                mean=pixels.mean().item(), std=pixels.std().item())


# ----------------------------------------------------------------------------- batches
def prepare(images: torch.Tensor, mean: float, std: float,
            aug: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 [B,1,H,W] -> float in [0,1] -> augmented (training only) -> standardised,
    in channels_last layout like the models (see training/device.place_model). `aug` holds each
    image's augmentation parameters (a slice of an EpochDraw's)."""
    x = images.float().mul_(1 / 255)
    if aug:
        x = augment(x, aug)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def batches(n: int, batch_size: int, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Index slices 0..n-1 in order (evaluation), made on the device."""
    yield from torch.arange(n, device=device).split(batch_size)


@dataclass
class EpochDraw:
    """What one training epoch draws at random, all at once: the order of the images and
    each position's augmentation parameters (absent when that augmentation is off).

    Drawn on the CPU from the run's seeded generator, so a seed gives the same batches on
    every device, and moved to the device once per epoch: a training step only gathers
    its slice, with no host round-trip (which is what lets a CUDA graph replay it)."""

    order: torch.Tensor  # int64 [n], a permutation of the training images
    angle: torch.Tensor | None = None  # [n] radians
    shift: torch.Tensor | None = None  # [n, 2] in affine_grid units (2 = the image side)
    brightness: torch.Tensor | None = None  # [n] factors

    def fields(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in vars(self).items() if v is not None}

    def to(self, device: torch.device | str) -> EpochDraw:
        return EpochDraw(**{k: v.to(device) for k, v in self.fields().items()})

    def copy_(self, other: EpochDraw) -> None:
        """Overwrite in place (a captured CUDA graph keeps reading the same memory)."""
        for k, v in self.fields().items():
            v.copy_(getattr(other, k), non_blocking=True)

    def augmentation(self, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        """The augmentation parameters of the images at positions `pos` of the epoch."""
        return {k: v[pos] for k, v in self.fields().items() if k != "order"}


def draw_epoch(n: int, aug: Any, generator: torch.Generator) -> EpochDraw:
    """The permutation, then the parameters of every augmentation that is on (CPU tensors)."""
    draw = EpochDraw(order=torch.randperm(n, generator=generator))
    if aug is not None and (aug.rotation or aug.translate):
        draw.angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(aug.rotation)
        # affine_grid works in [-1, 1] coordinates: a shift of 2 is the full image side.
        draw.shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * aug.translate * 2
    if aug is not None and aug.brightness:
        draw.brightness = 1 + (torch.rand(n, generator=generator) * 2 - 1) * aug.brightness
    return draw


def augment(images: torch.Tensor, aug: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rotation/translation (one affine warp) and brightness of float [0,1] batches, with
    per-image parameters from `EpochDraw.augmentation`."""
    if "angle" in aug:
        cos, sin, shift = aug["angle"].cos(), aug["angle"].sin(), aug["shift"]
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                             torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    if "brightness" in aug:
        images = images * aug["brightness"].to(images).view(-1, 1, 1, 1)
    return images.clamp_(0, 1)
