"""Shift augmentation: each image moved by its own offset, edges repeated, nothing else changed."""

import numpy as np
import torch

from training.augment import random_shift


def reference_shift(image: np.ndarray, dy: int, dx: int, k: int) -> np.ndarray:
    """The same move by padding with the edge and cropping: output (r, c) = input (r - dy, c - dx), clamped."""
    padded = np.pad(image, ((0, 0), (k, k), (k, k)), mode="edge")
    _, height, width = image.shape
    return padded[:, k - dy : k - dy + height, k - dx : k - dx + width]


def test_random_shift_moves_each_image_by_its_own_offset_with_edges_repeated():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 3, 7, 9), dtype=np.uint8))
    moved = random_shift(images, 2, torch.Generator().manual_seed(5))
    offsets = torch.randint(-2, 3, (2, 32), generator=torch.Generator().manual_seed(5))  # the draws it made
    assert moved.dtype == torch.uint8 and moved.shape == images.shape
    for i in range(32):
        dy, dx = int(offsets[0, i]), int(offsets[1, i])
        np.testing.assert_array_equal(moved[i].numpy(), reference_shift(images[i].numpy(), dy, dx, 2))
    assert len({(int(a), int(b)) for a, b in offsets.T}) > 10  # offsets vary per image, on both axes


def test_random_shift_by_zero_is_the_identity():
    images = torch.arange(2 * 16, dtype=torch.uint8).reshape(2, 1, 4, 4)
    assert random_shift(images, 0) is images
