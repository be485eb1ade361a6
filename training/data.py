"""Image datasets as uint8 arrays ``[N, C, H, W]``, and the held-out slices.

Readers: IDX (gzipped or not), ``.npz``, a folder of image files and CIFAR-10/100
binary batches; :func:`load_images` is the one entry point. Anything
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
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.decode import LUMA_FIXED_POINT

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


SOURCES = ("fashion-mnist", "folder", "npz", "idx", "cifar")
CIFAR_IMAGE_BYTES = 3 * 32 * 32
CIFAR_LABEL_BYTES = {"cifar10": 1, "cifar100": 2}  # bytes before each record's pixels


def load_image_folder(path: str | Path, channels: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Every image file under ``path`` (recursive, sorted by path) as uint8 [N, C, H, W].

    ``channels`` None infers them: 3 if any image holds colour (a pixel whose R, G
    and B differ), else 1. Images of different sizes are refused unless ``size``
    (H, W) says what to resize them to.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"image folder not found: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = _on_white(image)
                if size is not None and image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.LANCZOS)
                arrays.append(np.asarray(image, dtype=np.uint8))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"cannot read image {file}: {exc}") from exc
    shapes = sorted({a.shape[:2] for a in arrays})
    if len(shapes) > 1:
        raise DatasetError(
            f"images under {path} differ in size ({len(shapes)} sizes, e.g. "
            + ", ".join(f"{h}x{w}" for h, w in shapes[:3])
            + "); pass a size (--size HxW, or data.size in the config) to resize them all"
        )
    rgb = np.stack(arrays).transpose(0, 3, 1, 2)
    return convert_channels(rgb, channels if channels is not None else infer_channels(rgb), source=str(path))


def _on_white(image):
    """RGB, with any transparency composited on white (what a viewer shows)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def infer_channels(images: np.ndarray) -> int:
    """3 if any pixel of the [N, 3, H, W] array has unequal R, G, B; else 1. Gray arrays stay 1."""
    if images.shape[1] == 1:
        return 1
    colour = (images[:, 0] != images[:, 1]) | (images[:, 1] != images[:, 2])
    return 3 if bool(colour.any()) else 1


def convert_channels(images: np.ndarray, channels: int, source: str = "array") -> np.ndarray:
    """[N, C, H, W] to ``channels``: gray repeated to RGB, or RGB to ITU-R 601 luma in the service's fixed point."""
    if channels not in (1, 3):
        raise DatasetError(f"{source}: channels must be 1 or 3, got {channels}")
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 3:
        return np.ascontiguousarray(np.repeat(images, 3, axis=1))
    r, g, b = (images[:, i : i + 1].astype(np.uint32) for i in range(3))
    wr, wg, wb = LUMA_FIXED_POINT
    return ((r * wr + g * wg + b * wb + 0x8000) >> 16).astype(np.uint8)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize [N, C, H, W] uint8 images to ``size`` (H, W) with Pillow's LANCZOS; a no-op at that size."""
    from PIL import Image

    if images.shape[2:] == tuple(size):
        return images
    out = np.empty((len(images), images.shape[1], *size), dtype=np.uint8)
    for index, image in enumerate(images):
        if image.shape[0] == 1:
            out[index, 0] = np.asarray(Image.fromarray(image[0]).resize((size[1], size[0]), Image.LANCZOS))
        else:
            resized = Image.fromarray(image.transpose(1, 2, 0)).resize((size[1], size[0]), Image.LANCZOS)
            out[index] = np.asarray(resized).transpose(2, 0, 1)
    return out


def load_idx_images(path: str | Path) -> np.ndarray:
    """An IDX images file (``*-images-idx3-ubyte[.gz]``, MNIST style) as [N, C, H, W]."""
    return to_nchw(read_idx(path), source=str(path))


def cifar_files(path: Path) -> list[Path]:
    """The ``.bin`` batch files of a CIFAR binary folder (sorted), or the one file given."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"CIFAR binary file or folder not found: {path}")
    files = sorted(p for p in path.rglob("*.bin") if "meta" not in p.name)
    if not files:
        raise DatasetError(f"no CIFAR .bin batch files under {path} (the binary version, not the pickled one)")
    return files


def load_cifar_binary(path: str | Path, variant: str | None = None) -> np.ndarray:
    """CIFAR-10/100 in the *binary* format (never the pickled one) as uint8 [N, 3, 32, 32].

    Each record is the label byte(s) then 3072 pixel bytes, R then G then B planes,
    row-major. ``variant`` ``cifar10`` (1 label byte) or ``cifar100`` (2); None tells
    them apart by the file size, refusing a size both or neither divide.
    """
    arrays = []
    for file in cifar_files(Path(path)):
        data = np.fromfile(file, dtype=np.uint8)
        fits = [name for name, label in CIFAR_LABEL_BYTES.items() if data.size % (label + CIFAR_IMAGE_BYTES) == 0]
        kind = variant or (fits[0] if len(fits) == 1 else None)
        if kind not in CIFAR_LABEL_BYTES or kind not in fits or not data.size:
            raise DatasetError(
                f"{file}: {data.size} bytes is not a whole number of CIFAR-10 (3073-byte) or CIFAR-100 "
                f"(3074-byte) records" + (f" of {variant}" if variant else "")
            )
        label = CIFAR_LABEL_BYTES[kind]
        records = data.reshape(-1, label + CIFAR_IMAGE_BYTES)
        arrays.append(records[:, label:].reshape(-1, 3, 32, 32))
    return np.ascontiguousarray(np.concatenate(arrays))


def load_images(
    source: str,
    path: str | Path,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    split: str = "train",
) -> np.ndarray:
    """Any supported source as uint8 [N, C, H, W], converted to ``channels`` and resized to ``size``.

    The one reader every command uses (train, export, calibrate, evaluate, build),
    so a data config means the same images everywhere.
    """
    if source == "fashion-mnist":
        images = load_fashion_mnist(split, path)[0]
    elif source == "folder":
        images = load_image_folder(path, size=size)
    elif source == "npz":
        images = load_npz(path)
    elif source == "idx":
        images = load_idx_images(path)
    elif source == "cifar":
        images = load_cifar_binary(path)
    else:
        raise DatasetError(f"unknown data source {source!r}; one of {', '.join(SOURCES)}")
    if channels is not None and channels != images.shape[1]:
        have = {1: "gray", 3: "colour"}[images.shape[1]]
        print(
            f"note: {path} holds {have} images; converting them to {channels} channel(s) as configured", file=sys.stderr
        )
        images = convert_channels(images, channels, source=str(path))
    if size is not None:
        images = resize_images(images, tuple(size))
    return images


def detect_source(path: str | Path) -> str:
    """The reader for a path a user hands over: folder, .npz, IDX or CIFAR binary."""
    path = Path(path)
    if path.is_dir():
        if any(path.rglob("*.bin")) and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
            return "cifar"
        return "folder"
    name = path.name.lower()
    if name.endswith(".npz"):
        return "npz"
    if "idx" in name or name.endswith("-ubyte") or name.endswith("-ubyte.gz"):
        return "idx"
    if name.endswith(".bin"):
        return "cifar"
    if not path.exists():
        raise DatasetError(f"not found: {path}")
    raise DatasetError(f"{path}: not a folder of images, an .npz, an IDX file or a CIFAR .bin file")


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
    shuffle_seed: int | None = Field(
        None,
        description="None: slices by position in the split as read. A seed: by position in that seed's fixed "
        "permutation of it, for data stored in order (a folder sorted by class), where the last positions "
        "would hold other kinds of image than the rest and the calibration would not be exchangeable with them",
    )


def slice_order(n: int, spec: SliceSpec) -> np.ndarray:
    """The order whose positions the slices' ranges count: the split as read, or a seeded permutation of it."""
    if spec.shuffle_seed is None:
        return np.arange(n)
    return np.random.default_rng(spec.shuffle_seed).permutation(n)


@dataclass
class Slices:
    train: np.ndarray
    validation: np.ndarray
    holdout: np.ndarray
    ranges: dict[str, tuple[int, int]]


def split_training_set(images: np.ndarray, spec: SliceSpec) -> Slices:
    n = len(images)
    if spec.shuffle_seed is not None:
        images = images[slice_order(n, spec)]
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


def test_positions(n: int, every: int) -> np.ndarray:
    """Which of ``n`` images are the test set when it is cut as every ``every``-th (index % every == 0)."""
    return np.arange(n) % every == 0


def recorded_training_split(data, shape: tuple[int, int, int]) -> np.ndarray:
    """A manifest's training split (``service.artifact.TrainingData``), in the order its slice ranges count.

    Calibration, evaluation and the likelihood figure all re-read the held-out and
    trained-on slices through this, so they see exactly the images export hashed.
    """
    images = load_images(data.source, data.path, shape[0], tuple(shape[1:]), split=data.split)
    if data.test_every:
        images = images[~test_positions(len(images), data.test_every)]
    return images[slice_order(len(images), SliceSpec(validation=0, holdout=0, shuffle_seed=data.slice_seed))]


def recorded_test_split(data, shape: tuple[int, int, int]) -> np.ndarray | None:
    """A manifest's in-distribution test set when it records one it can re-read; None when it records none."""
    if data.test_every:
        images = load_images(data.source, data.path, shape[0], tuple(shape[1:]), split=data.split)
        return images[test_positions(len(images), data.test_every)]
    if data.test_path:
        source = data.test_source or data.source
        return load_images(source, data.test_path, shape[0], tuple(shape[1:]), split="test")
    return None
