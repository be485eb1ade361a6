"""The clip-art preparation, as one function every colour image set goes through.

``models/clipart-glow/1`` is trained on Debian's openclipart PNGs prepared one fixed
way: RGBA (and palette transparency) composited on white, padded to a square with
white (the drawing centred), resized with Pillow's LANCZOS, as RGB. An OOD set
prepared any other way (transparent corners turned black, a stretched aspect ratio,
another resampling filter) would let a gate win on the preprocessing instead of on
the content, so the OOD sets of ``training.colour_sets`` use this very function.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)


def square_on_white(image: Image.Image, size: int) -> np.ndarray:
    """Any Pillow image as uint8 ``[3, size, size]``: on white, padded square, LANCZOS."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
    flat = Image.alpha_composite(canvas, rgba).convert("RGB")
    side = max(flat.size)
    square = Image.new("RGB", (side, side), WHITE)
    square.paste(flat, ((side - flat.width) // 2, (side - flat.height) // 2))
    small = square.resize((size, size), Image.LANCZOS)
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)


def open_trusted(path: str | Path) -> Image.Image:
    """An image file from a Debian or Python package, decoded as RGBA (transparency kept).

    Some packaged drawings are rendered past Pillow's decompression-bomb guard. These
    are trusted files, so the guard is lifted here, and only here (never in the
    service, which decodes untrusted uploads).
    """
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as image:
        image.load()
        return image.convert("RGBA")


def prepare_file(path: str | Path, size: int) -> np.ndarray:
    """One image file prepared like the clip art, as uint8 ``[3, size, size]``."""
    return square_on_white(open_trusted(path), size)
