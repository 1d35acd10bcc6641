"""IDX reading, locating, splits, class groups, batches and augmentation on synthetic files."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from conftest import make_dataset, write_idx
from omegaconf import OmegaConf

from mnistcnn.base.config import AugmentConfig, DataConfig
from mnistcnn.base.errors import UserError
from mnistcnn.data import dataset


def data_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(DataConfig), overrides)


def test_read_idx_gzipped_and_plain_agree(tmp_path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "a", array, 2051, compress=True)
    write_idx(tmp_path / "b", array, 2051, compress=False)
    for name in ("a.gz", "b"):
        t = dataset.read_idx(tmp_path / name, dataset.IMAGE_MAGIC)
        assert t.dtype == torch.uint8 and t.shape == (2, 28, 28)
        assert np.array_equal(t.numpy(), array)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:100], "truncated"),
    (lambda raw: b"", "empty"),
    (lambda raw: b"\x00\x00\x08\x01" + raw[4:], "expected 2051"),
    (lambda raw: b"\x1f\x8b" + b"garbage" * 10, "cannot read"),
])
def test_read_idx_rejects_damaged_files(tmp_path, damage, message):
    write_idx(tmp_path / "img", np.zeros((3, 28, 28), np.uint8), 2051, compress=False)
    path = tmp_path / "img"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError, match=message) as err:
        dataset.read_idx(path, dataset.IMAGE_MAGIC)
    assert str(path) in str(err.value)


def test_read_dataset_checks_counts_sizes_and_labels(tmp_path):
    folder = make_dataset(tmp_path / "d", n_train=50, n_test=20)
    assert len(dataset.read_dataset(folder)["train_labels"]) == 50
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8), 2049)
    with pytest.raises(UserError, match="20 images .* but 19 labels"):
        dataset.read_dataset(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(20, 12, np.uint8), 2049)
    with pytest.raises(UserError, match="label 12"):
        dataset.read_dataset(folder)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((20, 32, 32), np.uint8), 2051)
    with pytest.raises(UserError, match="expected 28x28"):
        dataset.read_dataset(folder)


def test_locate_order_dir_then_env_then_torchvision_layout(tmp_path, monkeypatch):
    a = make_dataset(tmp_path / "a", 20, 10)
    b = make_dataset(tmp_path / "b", 20, 10)
    monkeypatch.setenv("MNISTCNN_DATA_DIR", str(b))
    monkeypatch.chdir(tmp_path)
    assert dataset.locate(data_cfg(dir=str(a))) == a
    assert dataset.locate(data_cfg()) == b
    monkeypatch.delenv("MNISTCNN_DATA_DIR")
    raw = make_dataset(tmp_path / "data" / "MNIST" / "raw", 20, 10)
    assert dataset.locate(data_cfg()).resolve() == raw.resolve()
    with pytest.raises(UserError, match="does not hold the four mnist IDX files"):
        dataset.locate(data_cfg(dir=str(tmp_path / "empty")))


def test_missing_files_and_failed_download_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv("MNISTCNN_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)

    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr("torchvision.datasets.MNIST", offline)
    with pytest.raises(UserError, match="download failed .*set data.dir or \\$MNISTCNN_DATA_DIR"):
        dataset.locate(data_cfg())


def fake_tensors(n_train=100, n_test=40):
    return {"train_images": torch.arange(n_train, dtype=torch.uint8).view(-1, 1, 1).expand(
                n_train, 28, 28).clone(),
            "train_labels": torch.arange(n_train, dtype=torch.uint8) % 10,
            "test_images": torch.zeros(n_test, 28, 28, dtype=torch.uint8),
            "test_labels": torch.arange(n_test, dtype=torch.uint8) % 10}


def test_split_takes_last_val_size_images_and_limit_of_the_rest():
    train, val, test = dataset.split(fake_tensors(), data_cfg(val_size=30, limit=50), seed=0)
    assert len(train[1]) == 50 and len(val[1]) == 30 and len(test[1]) == 40
    assert train[0][:, 0, 0].tolist() == list(range(50))
    assert val[0][:, 0, 0].tolist() == list(range(70, 100))
    train, val, _ = dataset.split(fake_tensors(), data_cfg(val_size=0), seed=0)
    assert val is None and len(train[1]) == 100


def test_val_size_larger_than_training_set_is_a_user_error():
    with pytest.raises(UserError, match="data.val_size=100 leaves no training images"):
        dataset.split(fake_tensors(), data_cfg(val_size=100), seed=0)


def test_resplit_pools_everything_and_is_seeded():
    cfg = data_cfg(val_size=0, resplit=0.8)
    train, _, test = dataset.split(fake_tensors(100, 40), cfg, seed=1)
    assert len(train[1]) == 112 and len(test[1]) == 28
    again, _, _ = dataset.split(fake_tensors(100, 40), cfg, seed=1)
    other, _, _ = dataset.split(fake_tensors(100, 40), cfg, seed=2)
    assert torch.equal(train[0], again[0]) and not torch.equal(train[0], other[0])


def test_class_grouping_maps_labels_and_names():
    groups = {0: [0, 6], 1: [1, 7], 2: [2, 3, 5, 8], 3: [4, 9]}
    mapped = dataset.group_labels(torch.arange(10), groups)
    assert mapped.tolist() == [0, 1, 2, 2, 3, 2, 0, 1, 2, 3]
    assert dataset.class_names("mnist", groups) == ["{0,6}", "{1,7}", "{2,3,5,8}", "{4,9}"]


@pytest.mark.parametrize("groups, message", [
    ({0: [0, 1], 1: [2, 3]}, "misses digits"),
    ({0: [0, 1, 2, 3, 4], 1: [4, 5, 6, 7, 8, 9]}, "repeats digits \\[4\\]"),
    ({0: list(range(10)), 2: [0]}, "keys must be 0..1"),
])
def test_bad_class_groupings_are_user_errors(groups, message):
    with pytest.raises(UserError, match=message):
        dataset.group_labels(torch.arange(10), groups)


def test_load_puts_splits_on_device_with_grouped_labels(tmp_path):
    folder = make_dataset(tmp_path / "d", 200, 50)
    d = dataset.load(data_cfg(dir=str(folder), val_size=40,
                           classes={0: [0, 6], 1: [1, 7], 2: [2, 3, 5, 8], 3: [4, 9]}))
    assert d.train.images.shape == (160, 1, 28, 28) and d.train.images.dtype == torch.uint8
    assert d.num_classes == 4 and int(d.test.labels.max()) == 3
    assert 0 < d.mean < 1 and 0 < d.std < 1


def test_epoch_draw_is_a_seeded_permutation_and_batches_cover_every_index():
    def draw(seed, aug=None):
        return dataset.draw_epoch(103, aug, torch.Generator().manual_seed(seed))
    assert sorted(draw(0).order.tolist()) == list(range(103))
    assert torch.equal(draw(0).order, draw(0).order)
    assert not torch.equal(draw(0).order, draw(1).order)
    # Augmentation parameters come after the permutation from the same generator, so
    # switching augmentation on keeps the batch order of the run without it.
    aug = OmegaConf.structured(AugmentConfig(rotation=10, translate=0.1, brightness=0.5))
    augmented = draw(0, aug)
    assert torch.equal(augmented.order, draw(0).order)
    assert augmented.angle.abs().max() <= math.radians(10) and augmented.shift.shape == (103, 2)
    assert augmented.shift.abs().max() <= 0.2 and (augmented.brightness - 1).abs().max() <= 0.5
    assert draw(0).fields().keys() == {"order"}
    assert [len(b) for b in dataset.batches(25, 10)] == [10, 10, 5]
    assert torch.equal(torch.cat(list(dataset.batches(25, 10))), torch.arange(25))


def test_epoch_draw_copies_in_place_and_slices_by_position():
    aug = OmegaConf.structured(AugmentConfig(brightness=0.5))
    first = dataset.draw_epoch(10, aug, torch.Generator().manual_seed(0))
    second = dataset.draw_epoch(10, aug, torch.Generator().manual_seed(1))
    kept = first.order
    first.copy_(second)
    assert first.order is kept and torch.equal(first.order, second.order)
    pos = torch.tensor([3, 4])
    assert torch.equal(first.augmentation(pos)["brightness"], second.brightness[3:5])


def test_prepare_standardises():
    images = torch.full((4, 1, 28, 28), 255, dtype=torch.uint8)
    x = dataset.prepare(images, mean=0.5, std=0.25)
    assert x.dtype == torch.float32 and torch.allclose(x, torch.full_like(x, 2.0))


def test_augmentation_keeps_shape_and_range_and_changes_images():
    torch.manual_seed(0)
    images = (torch.rand(16, 1, 28, 28) > 0.7).float()
    aug = OmegaConf.structured(AugmentConfig(rotation=10, translate=0.1, brightness=0.5))
    draw = dataset.draw_epoch(16, aug, torch.Generator().manual_seed(0))
    params = draw.augmentation(torch.arange(16))
    out = dataset.augment(images.clone(), params)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images)
    assert torch.equal(out, dataset.augment(images.clone(), params))
    # A zero rotation and shift with brightness 1 is the identity warp.
    identity = {"angle": torch.zeros(16), "shift": torch.zeros(16, 2), "brightness": torch.ones(16)}
    assert torch.allclose(dataset.augment(images.clone(), identity), images, atol=1e-5)
    off = dataset.draw_epoch(16, OmegaConf.structured(AugmentConfig()), torch.Generator())
    assert off.augmentation(torch.arange(4)) == {}
    assert torch.equal(dataset.prepare((images * 255).byte(), 0, 1, {}), images)


def test_fashion_mnist_reads_the_same_format(tmp_path):
    folder = make_dataset(tmp_path / "f", 30, 10)
    d = dataset.load(data_cfg(name="fashion_mnist", dir=str(folder), val_size=0))
    assert d.class_names[0] == "T-shirt" and len(d.train) == 30


def test_fashion_mnist_is_found_through_its_env_var_then_torchvision_folder(tmp_path,
                                                                           monkeypatch):
    mnist = make_dataset(tmp_path / "mnist", 20, 10)
    env_dir = make_dataset(tmp_path / "fashion", 30, 10, seed=1)
    raw = make_dataset(tmp_path / "cwd" / "data" / "FashionMNIST" / "raw", 40, 10, seed=2)
    monkeypatch.setenv("MNISTCNN_DATA_DIR", str(mnist))  # MNIST's variable is not Fashion's
    monkeypatch.setenv("MNISTCNN_FASHION_DIR", str(env_dir))
    monkeypatch.chdir(tmp_path / "cwd")
    cfg = data_cfg(name="fashion_mnist", val_size=0)
    assert dataset.locate(cfg) == env_dir
    loaded = dataset.load(cfg)
    assert len(loaded.train) == 30 and loaded.class_names[9] == "Boot"
    expected = dataset.read_idx(env_dir / "train-images-idx3-ubyte.gz", dataset.IMAGE_MAGIC)
    assert torch.equal(loaded.train.images[:, 0], expected)  # the env folder's files, read
    monkeypatch.delenv("MNISTCNN_FASHION_DIR")
    assert dataset.locate(cfg).resolve() == raw.resolve()
    assert len(dataset.load(cfg).train) == 40


def test_gzip_helper_matches_reader(tmp_path):
    # write_idx's .gz must be a real gzip stream (guards the fixtures themselves)
    write_idx(tmp_path / "x", np.zeros(5, np.uint8), 2049)
    assert gzip.decompress((tmp_path / "x.gz").read_bytes())[:4] == b"\x00\x00\x08\x01"
