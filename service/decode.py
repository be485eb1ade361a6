"""Turn what clients send (encoded images, tensors) into the model's ``uint8[N, C, H, W]``.

Every check names the image at fault, so a client with 32 images learns which
one is wrong and why. Nothing is guessed: an image of the wrong size is refused
(422) unless ``resize`` is on; a gray image for an RGB model, or the reverse, is
converted or refused as ``channel_mismatch`` says (the same rule for encoded
images and tensors, with Pillow's own luma, so both give the same pixels); the
same channels in another encoding (an alpha channel, a palette) are converted,
alpha composited on white; and tensor values must be whole
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


def decode_image(
    blob: bytes, index: int, spec: InputSpec, max_pixels: int, resize: bool, convert_channels: bool = False
) -> np.ndarray:
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
        return _conform(image, index, spec, resize, convert_channels)


# Pillow modes by how many colour channels they hold; alpha is not a colour channel
GRAY_MODES = frozenset({"1", "L", "LA", "La"})
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"})
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
CHANNEL_MODES = {1: "L", 3: "RGB"}
# ITU-R 601 luma in Pillow's own fixed point (Convert.c), so a tensor and a PNG of the same RGB pixels turn
# into the same gray pixels
LUMA_FIXED_POINT = (19595, 38470, 7471)


def channels_of(image: Image.Image) -> int | None:
    """1 for gray images, 3 for colour ones, None for the rest (16/32-bit, float): never guessed.

    A palette image (every GIF is one) whose palette holds only grays counts as gray.
    """
    mode = image.mode
    if mode in ("P", "PA"):
        palette = image.getpalette() or []
        if all(r == g == b for r, g, b in zip(palette[0::3], palette[1::3], palette[2::3], strict=False)):
            return 1
    return 1 if mode in GRAY_MODES else 3 if mode in COLOUR_MODES else None


def wrong_channels(index: int, got: str, spec: InputSpec) -> ServiceError:
    channels = spec.shape[0]
    return unprocessable(
        "wrong_channels",
        f"image {index} is {got}; the model takes {spec.color_mode} ({channels} channel(s) of 8 bits); "
        "convert it, or run the server with OODGATE_CHANNEL_MISMATCH=convert",
        index,
    )


def on_white(image: Image.Image) -> Image.Image:
    """Transparency composited on white (what a viewer shows, and how image folders are read for training)."""
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return flat.convert("L") if image.mode in GRAY_MODES else flat
    return image


def _conform(image: Image.Image, index: int, spec: InputSpec, resize: bool, convert_channels: bool) -> np.ndarray:
    """A decoded image -> ``uint8[C, H, W]``; same channels in another encoding (alpha, palette) is converted."""
    channels, height, width = spec.shape
    mode = spec.color_mode
    if image.mode != mode:
        have = channels_of(image)
        if have is None:
            raise unprocessable(
                "unsupported_color_mode", f"image {index} has color mode {image.mode}; send 8-bit gray or RGB", index
            )
        if have != channels and not convert_channels:
            raise wrong_channels(index, f"{'grayscale' if have == 1 else 'colour'} ({image.mode})", spec)
        image = on_white(image).convert(mode)
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


def convert_tensor_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``[N, H, W, 1|3]`` to ``channels``: gray repeated into R, G, B; RGB to luma exactly as Pillow does."""
    if array.shape[3] == channels:
        return array
    if channels == 3:
        return np.repeat(array, 3, axis=3)
    weights = np.asarray(LUMA_FIXED_POINT, dtype=np.uint32)
    luma = (array.astype(np.uint32) @ weights + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def decode_images(
    blobs: list[bytes], spec: InputSpec, max_pixels: int, resize: bool, convert_channels: bool = False
) -> np.ndarray:
    """Encoded images -> ``uint8[N, C, H, W]``; the first bad one raises, naming its index."""
    if not blobs:
        raise bad_request("no_images", "the request holds no images")
    return np.stack([decode_image(blob, i, spec, max_pixels, resize, convert_channels) for i, blob in enumerate(blobs)])


def tensor_to_images(array: np.ndarray, spec: InputSpec, resize: bool, convert_channels: bool = False) -> np.ndarray:
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
    n_h, n_w, n_c = array.shape[1:]
    if n_c != channels and n_c in CHANNEL_MODES:
        if not convert_channels:
            raise wrong_channels(0, f"a {n_h}x{n_w}x{n_c} tensor", spec)
        array = convert_tensor_channels(array, channels)
        n_c = channels
    if array.shape[1:] == (height, width, channels):
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    if not resize:
        code = "wrong_channels" if n_c != channels else "wrong_size"
        raise unprocessable(
            code, f"image 0: pixel tensors for this model are {height}x{width}x{channels}, got {n_h}x{n_w}x{n_c}", 0
        )
    source_modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if n_c not in source_modes:
        raise unprocessable("wrong_channels", f"cannot convert {n_c} channels to {spec.color_mode}")
    mode = source_modes[n_c]
    out = []
    for i, item in enumerate(array):
        image = Image.fromarray(item[..., 0] if mode == "L" else item, mode=mode)
        out.append(_conform(image, i, spec, resize=True, convert_channels=convert_channels))
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
