"""Dataset readers: every format round-trips, every failure says where and what to do."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from training.data import (
    DatasetError,
    SliceSpec,
    load_fashion_mnist,
    load_image_folder,
    load_npz,
    read_idx,
    split_training_set,
    to_nchw,
)


def write_idx(path, array, compress):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 4), dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    write_idx(path, images, compress)
    np.testing.assert_array_equal(read_idx(path), images)


def test_fashion_mnist_layout_and_missing_data_hint(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(6, dtype=np.uint8), False)
    loaded, labels = load_fashion_mnist("test", tmp_path)
    assert loaded.shape == (6, 1, 28, 28) and labels.tolist() == list(range(6))
    with pytest.raises(DatasetError) as err:
        load_fashion_mnist("train", tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "apt-get install -y dataset-fashion-mnist" in str(err.value)


def test_truncated_and_foreign_idx_files_are_named(tmp_path):
    images = np.zeros((4, 3, 3), np.uint8)
    path = tmp_path / "short.idx"
    write_idx(path, images, False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)
    bogus = tmp_path / "bogus.idx"
    bogus.write_bytes(b"\x12\x34\x56\x78" + b"\0" * 20)
    with pytest.raises(DatasetError, match="not an unsigned-byte IDX"):
        read_idx(bogus)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="cannot read IDX"):
        read_idx(broken_gz)


def test_npz_and_folder_readers(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.arange(3))
    assert load_npz(tmp_path / "a.npz").shape == (3, 1, 8, 8)
    np.savez(tmp_path / "b.npz", np.zeros((2, 8, 8, 3), np.uint8))
    assert load_npz(tmp_path / "b.npz").shape == (2, 3, 8, 8)
    np.savez(tmp_path / "c.npz", one=images, two=images)
    with pytest.raises(DatasetError, match="name the array"):
        load_npz(tmp_path / "c.npz")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    np.testing.assert_array_equal(load_image_folder(folder)[:, 0], images)
    assert load_image_folder(folder, size=(4, 4)).shape == (3, 1, 4, 4)
    (folder / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="bad.png"):
        load_image_folder(folder)
    with pytest.raises(DatasetError, match="not found"):
        load_image_folder(tmp_path / "missing")


def test_to_nchw_rejects_floats_and_odd_shapes():
    with pytest.raises(DatasetError, match="uint8"):
        to_nchw(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(DatasetError, match="shape"):
        to_nchw(np.zeros((2, 5, 4, 7), np.uint8))


def test_slices_are_fixed_disjoint_and_cover_the_split():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    slices = split_training_set(images, SliceSpec(validation=10, holdout=20))
    assert slices.ranges == {"train": (0, 70), "validation": (70, 80), "holdout": (80, 100)}
    together = np.concatenate([slices.train, slices.validation, slices.holdout]).ravel()
    np.testing.assert_array_equal(together, np.arange(100))
    with pytest.raises(DatasetError):
        split_training_set(images, SliceSpec(validation=50, holdout=50))
