"""Input complexity ``L(x)``: the bits a lossless compressor needs for an image (Serrà et al. 2020).

A flow's bits per dimension mostly measures how simple an image is: constant
images and MNIST digits get *fewer* bits than the FashionMNIST the flow was
trained on. Subtracting what a generic lossless compressor needs corrects for
that. The compressor is PNG at the highest zlib level, on the raw uint8 pixels
the service receives, so training, calibration and serving compute the very
same number.

Units matter: the ``complexity`` score is ``bpd - L(x) / D``, so ``L(x)`` must be
in **bits** (not bytes) for ``L(x) / D`` to be bits per dimension like ``bpd``.
A bytes-for-bits slip shrinks the correction eightfold and silently turns a
0.99 AUROC into one near 0.1; ``tests/service/test_complexity.py`` guards it.
The whole PNG file is counted (Serrà et al. do the same); its header is a
constant offset that changes no ranking and no p-value.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PNG_COMPRESS_LEVEL = 9


def png_bits(image: np.ndarray) -> int:
    """Bits of one uint8 ``[C, H, W]`` image saved as PNG."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a uint8 [C, H, W] image with C in (1, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.shape[0] == 1:
        pil = Image.fromarray(np.ascontiguousarray(image[0]), mode="L")
    else:
        pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), mode="RGB")
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return 8 * buffer.tell()


def complexity_bits(images: np.ndarray) -> np.ndarray:
    """``L(x)`` in bits for each uint8 ``[N, C, H, W]`` image, as float64 ``[N]``.

    Divide by ``D = C*H*W`` to compare with ``bpd``.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected uint8 [N, C, H, W] images, got shape {images.shape}")
    return np.fromiter((png_bits(image) for image in images), dtype=np.float64, count=len(images))
