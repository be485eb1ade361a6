"""Dataset readers: every format round-trips, every failure says where and what to do."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from training.data import (
    DatasetError,
    SliceSpec,
    detect_source,
    load_cifar_binary,
    load_fashion_mnist,
    load_image_folder,
    load_images,
    load_npz,
    read_idx,
    slice_order,
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


def test_folder_of_colour_images_reads_as_rgb_and_gray_as_gray(tmp_path):
    rng = np.random.default_rng(3)
    colour = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    folder = tmp_path / "colour" / "sub"  # recursive
    folder.mkdir(parents=True)
    for i, image in enumerate(colour):
        Image.fromarray(image).save(folder / f"{i}.png")
    loaded = load_image_folder(tmp_path / "colour")
    assert loaded.shape == (4, 3, 6, 6)
    np.testing.assert_array_equal(loaded, colour.transpose(0, 3, 1, 2))
    gray = load_image_folder(tmp_path / "colour", channels=1)
    expected = np.asarray([np.asarray(Image.fromarray(c).convert("L")) for c in colour])
    np.testing.assert_array_equal(gray[:, 0], expected)


def test_transparent_images_are_composited_on_white(tmp_path):
    rgba = np.zeros((5, 5, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent except one pixel
    rgba[2, 2, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    loaded = load_image_folder(tmp_path)
    assert loaded.shape == (1, 3, 5, 5)
    assert loaded[0, :, 0, 0].tolist() == [255, 255, 255]
    assert loaded[0, :, 2, 2].tolist() == [255, 0, 0]


def test_mixed_sizes_are_refused_unless_a_size_is_given(tmp_path):
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DatasetError, match="differ in size.*--size"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=(4, 4)).shape == (2, 1, 4, 4)


@pytest.mark.parametrize("variant,label_bytes", [("cifar10", 1), ("cifar100", 2)])
def test_cifar_binary_reader(tmp_path, variant, label_bytes):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, (5, label_bytes), dtype=np.uint8)
    records = np.concatenate([labels, images.reshape(5, -1)], axis=1)
    folder = tmp_path / "cifar-bin"
    folder.mkdir()
    records[:3].tofile(folder / "data_batch_1.bin")
    records[3:].tofile(folder / "data_batch_2.bin")
    (folder / "batches.meta.txt").write_text("airplane\n")
    np.testing.assert_array_equal(load_cifar_binary(folder), images)
    np.testing.assert_array_equal(load_images("cifar", folder), images)
    assert detect_source(folder) == "cifar"
    (folder / "data_batch_3.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DatasetError, match="CIFAR"):
        load_cifar_binary(folder)


def test_idx_and_npz_through_the_one_reader_with_conversion(tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, True)
    assert detect_source(tmp_path / "train-images-idx3-ubyte.gz") == "idx"
    rgb = load_images("idx", tmp_path / "train-images-idx3-ubyte.gz", channels=3, size=(4, 4))
    assert rgb.shape == (3, 3, 4, 4) and (rgb[:, 0] == rgb[:, 2]).all()
    np.savez(tmp_path / "x.npz", images=images)
    assert detect_source(tmp_path / "x.npz") == "npz"
    np.testing.assert_array_equal(load_images("npz", tmp_path / "x.npz")[:, 0], images)
    with pytest.raises(DatasetError, match="unknown data source"):
        load_images("pickle", tmp_path / "x.npz")


def test_shuffled_slices_are_a_fixed_permutation():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    spec = SliceSpec(validation=10, holdout=20, shuffle_seed=0)
    slices = split_training_set(images, spec)
    order = slice_order(100, spec)
    np.testing.assert_array_equal(slices.holdout.ravel(), order[80:])
    assert sorted(np.concatenate([slices.train, slices.validation, slices.holdout]).ravel()) == list(range(100))
    assert slices.holdout.ravel().tolist() != list(range(80, 100))  # not the last positions
    np.testing.assert_array_equal(split_training_set(images, spec).holdout, slices.holdout)


def test_converting_colour_images_to_gray_is_announced(tmp_path, capsys):
    colour = np.random.default_rng(8).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    for i, image in enumerate(colour):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    assert load_images("folder", tmp_path, channels=1).shape == (2, 1, 4, 4)
    assert "holds colour images; converting them to 1 channel" in capsys.readouterr().err
    assert load_images("folder", tmp_path).shape == (2, 3, 4, 4)
    assert capsys.readouterr().err == ""
