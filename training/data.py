"""Image datasets as uint8 arrays ``[N, C, H, W]``, and the held-out slices.

Readers: IDX (gzipped or not), ``.npz`` and a folder of image files. Anything
missing or unreadable raises :class:`DatasetError` with one message that says
where the data was looked for and how to get it.

The training split is cut into three fixed, recorded slices by position:
``train`` (what the flow sees), ``validation`` (checkpoint selection) and
``holdout`` (never trained on; the calibration issue fits the OOD scores on it).
The test split is only ever used to measure.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = "install it with: sudo apt-get install -y dataset-fashion-mnist"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DatasetError(RuntimeError):
    """A dataset is missing or corrupt; the message says where we looked and what to do."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a numpy array of its declared shape."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"IDX file not found: {path}")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise DatasetError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
        shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(shape)):
            raise DatasetError(f"{path} is truncated: header says {shape}, found {body.size} bytes of data")
        return body.reshape(shape).copy()
    except (OSError, EOFError, struct.error) as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).exists():
            return directory / name
    raise DatasetError(f"{stem}[.gz] not found in {directory}")


def load_fashion_mnist(split: str, directory: str | Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """FashionMNIST ``train`` or ``test`` as (images uint8 [N,1,28,28], labels)."""
    directory = Path(directory)
    prefix = {"train": "train", "test": "t10k"}[split]
    try:
        images = read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
    except DatasetError as exc:
        raise DatasetError(f"FashionMNIST ({split}) not usable from {directory}: {exc}; {FASHION_MNIST_HINT}") from exc
    if images.ndim != 3 or len(images) != len(labels):
        raise DatasetError(f"FashionMNIST ({split}) in {directory} is inconsistent: {images.shape} vs {labels.shape}")
    return images[:, None], labels


def load_npz(path: str | Path, key: str | None = None) -> np.ndarray:
    """Images from an ``.npz``: the array ``key``, else ``images``, else ``x``, else the only one."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f".npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.keys())
            for candidate in [key, "images", "x"] if key else ["images", "x"]:
                if candidate in names:
                    return to_nchw(archive[candidate], source=str(path))
            if len(names) == 1:
                return to_nchw(archive[names[0]], source=str(path))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    raise DatasetError(f"{path} holds {names}; name the array to use")


def load_image_folder(path: str | Path, channels: int = 1, size: tuple[int, int] | None = None) -> np.ndarray:
    """Every image file under ``path`` (sorted), converted to ``channels`` and, if given, resized."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"image folder not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    mode = {1: "L", 3: "RGB"}[channels]
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert(mode)
                if size is not None and image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.BILINEAR)
                arrays.append(np.asarray(image, dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"cannot read image {file}: {exc}") from exc
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DatasetError(f"images under {path} differ in size ({sorted(shapes)[:3]}...); pass a size to resize")
    return to_nchw(np.stack(arrays), source=str(path))


def to_nchw(array: np.ndarray, source: str = "array") -> np.ndarray:
    """Accept [N,H,W], [N,H,W,C] (C in 1,3) or [N,C,H,W]; return uint8 [N,C,H,W]."""
    if array.dtype != np.uint8:
        raise DatasetError(f"{source}: images must be uint8, got {array.dtype}")
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        if array.shape[1] in (1, 3):
            return array
        if array.shape[3] in (1, 3):
            return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    raise DatasetError(f"{source}: expected [N,H,W], [N,H,W,C] or [N,C,H,W] images, got shape {array.shape}")


class SliceSpec(BaseModel):
    """Which positions of the training split go where. Recorded in the manifest."""

    model_config = ConfigDict(extra="forbid")

    validation: int = Field(2000, ge=0, description="images just before the holdout, for checkpoint selection")
    holdout: int = Field(5000, ge=0, description="last images of the split, never trained on (calibration)")


@dataclass
class Slices:
    train: np.ndarray
    validation: np.ndarray
    holdout: np.ndarray
    ranges: dict[str, tuple[int, int]]


def split_training_set(images: np.ndarray, spec: SliceSpec) -> Slices:
    n = len(images)
    holdout_start = n - spec.holdout
    validation_start = holdout_start - spec.validation
    if validation_start <= 0:
        raise DatasetError(f"{n} training images cannot give {spec.validation} validation + {spec.holdout} holdout")
    ranges = {
        "train": (0, validation_start),
        "validation": (validation_start, holdout_start),
        "holdout": (holdout_start, n),
    }
    return Slices(
        train=images[:validation_start],
        validation=images[validation_start:holdout_start],
        holdout=images[holdout_start:],
        ranges=ranges,
    )


def sha256_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
