"""Turn what clients send (encoded images, tensors) into the model's ``uint8[N, C, H, W]``.

Every check names the image at fault, so a client with 32 images learns which
one is wrong and why. Nothing is guessed: an image of the wrong size or color
mode is refused (422) unless ``resize`` is on, and tensor values must be whole
numbers in [0, 255] - a NaN or a 0..1-scaled float would otherwise be silently
cast into nonsense pixels. The decompression-bomb check reads only the header,
before any pixel is decompressed. These functions are CPU-bound and are called
from the data plane's thread pool, never on the event loop.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .artifact import InputSpec
from .errors import ServiceError, bad_request, too_large, unprocessable

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM"})


def decode_image(blob: bytes, index: int, spec: InputSpec, max_pixels: int, resize: bool) -> np.ndarray:
    """One encoded image -> ``uint8[C, H, W]`` for ``spec``."""
    if not blob:
        raise bad_request("empty_image", f"image {index} is empty", index)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(blob))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise too_large("decompression_bomb", f"image {index}: {exc}", index) from None
    except UnidentifiedImageError:
        raise bad_request("not_an_image", f"image {index} is not an image this server can read", index) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is the client's malformed input
        raise bad_request("not_an_image", f"image {index} cannot be read: {exc}", index) from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise too_large(
                "decompression_bomb",
                f"image {index} declares {width}x{height} = {width * height} pixels, more than the limit {max_pixels}",
                index,
            )
        if image.format not in ALLOWED_FORMATS:
            raise ServiceError(
                415,
                "unsupported_image_format",
                f"image {index} is {image.format}; send one of {sorted(ALLOWED_FORMATS)}",
                index,
            )
        try:
            image.load()
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
            raise bad_request("truncated_image", f"image {index} is truncated or corrupt: {exc}", index) from None
        return _conform(image, index, spec, resize)


def _conform(image: Image.Image, index: int, spec: InputSpec, resize: bool) -> np.ndarray:
    channels, height, width = spec.shape
    mode = spec.color_mode
    if image.mode != mode:
        if image.mode == "1" and mode == "L":
            image = image.convert("L")  # bilevel is 8-bit grayscale with two values
        elif resize:
            image = image.convert(mode)
        else:
            raise unprocessable(
                "wrong_channels",
                f"image {index} has color mode {image.mode}; the model takes {mode} ({channels} channel(s) of 8 bits)",
                index,
            )
    if image.size != (width, height):
        if not resize:
            raise unprocessable(
                "wrong_size",
                f"image {index} is {image.size[0]}x{image.size[1]}; the model takes {width}x{height}",
                index,
            )
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_images(blobs: list[bytes], spec: InputSpec, max_pixels: int, resize: bool) -> np.ndarray:
    """Encoded images -> ``uint8[N, C, H, W]``; the first bad one raises, naming its index."""
    if not blobs:
        raise bad_request("no_images", "the request holds no images")
    return np.stack([decode_image(blob, i, spec, max_pixels, resize) for i, blob in enumerate(blobs)])


def tensor_to_images(array: np.ndarray, spec: InputSpec, resize: bool) -> np.ndarray:
    """A pixel tensor ``[N, H, W]`` or ``[N, H, W, C]`` -> ``uint8[N, C, H, W]``, values checked per image."""
    channels, height, width = spec.shape
    if array.dtype.kind not in "uif":
        raise unprocessable("bad_dtype", f"pixel tensors must be numeric (uint8), got {array.dtype}")
    if array.ndim not in (3, 4):
        raise unprocessable("wrong_shape", f"pixel tensors are [N,H,W] or [N,H,W,C], got shape {list(array.shape)}")
    if array.shape[0] == 0:
        raise bad_request("no_images", "the tensor holds no images")
    if array.dtype != np.uint8:
        _check_values(array)
        array = array.astype(np.uint8)
    if array.ndim == 3:
        array = array[..., None]
    if array.shape[1:] == (height, width, channels):
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    if not resize:
        n_h, n_w, n_c = array.shape[1:]
        code = "wrong_channels" if n_c != channels else "wrong_size"
        raise unprocessable(
            code, f"image 0: pixel tensors for this model are {height}x{width}x{channels}, got {n_h}x{n_w}x{n_c}", 0
        )
    source_modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if array.shape[3] not in source_modes:
        raise unprocessable("wrong_channels", f"cannot convert {array.shape[3]} channels to {spec.color_mode}")
    mode = source_modes[array.shape[3]]
    out = []
    for i, item in enumerate(array):
        image = Image.fromarray(item[..., 0] if mode == "L" else item, mode=mode)
        out.append(_conform(image, i, spec, resize=True))
    return np.stack(out)


def _check_values(array: np.ndarray) -> None:
    flat = array.reshape(len(array), -1)
    if array.dtype.kind == "f":
        bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise unprocessable("non_finite", f"image {i} holds NaN or infinite values", i)
        fractional = (flat != np.floor(flat)).any(axis=1)
        if fractional.any():
            i = int(np.argmax(fractional))
            raise unprocessable("not_integer", f"image {i} holds fractional values; send uint8 pixels 0..255", i)
    out_of_range = ((flat < 0) | (flat > 255)).any(axis=1)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise unprocessable("out_of_range", f"image {i} holds values outside 0..255", i)
