"""Synthetic in-distribution images for the evaluation tests: no dataset needed."""

from __future__ import annotations

import numpy as np

SHAPE = (1, 28, 28)


def fashion_like(n: int, seed: int) -> np.ndarray:
    """Bright objects on a black background, enough like FashionMNIST for the builders."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, *SHAPE), np.uint8)
    for i in range(n):
        top, left = rng.integers(2, 8, 2)
        images[i, 0, top : top + 16, left : left + 14] = rng.integers(80, 255)
    return images
