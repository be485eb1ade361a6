"""Training-time augmentation: the invariances the gate should have, taught by showing them.

A flow fitted to centred items learns where the dataset puts them, so a copy moved by a
pixel or two can score like an outlier (the should-pass shift sets of ``oodgate-eval``;
``scripts/shift_crops.py`` shows the moved items, not the cropped ones, are flagged).
Showing each training image at a random small offset makes those positions part of the
distribution the flow models. The offset is uniform in ``[-k, k]`` on both axes,
independently per image, and the vacated rows and columns repeat the image's own edge,
so no fill colour is assumed (black on FashionMNIST, white on clip art). Validation,
calibration and every score see the images unmoved.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field


class AugmentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shift_pixels: int = Field(0, ge=0, le=8, description="move each training image by up to this many pixels per axis")


def shift_images(pixels: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``pixels`` ([B, C, H, W], any dtype), image ``i`` moved down ``rows[i]`` and right ``cols[i]`` pixels.

    A pixel of the output at (row, col) is the input's at (row - dy, col - dx), clamped
    to the frame: the edge rows and columns are repeated into what the move vacates.
    One definition of a move, for the augmentation and for probes that move images back.
    """
    batch, channels, height, width = pixels.shape
    device = pixels.device
    rows, cols = rows.to(device), cols.to(device)
    source_rows = (torch.arange(height, device=device)[None, :] - rows[:, None]).clamp(0, height - 1)
    source_cols = (torch.arange(width, device=device)[None, :] - cols[:, None]).clamp(0, width - 1)
    index_b = torch.arange(batch, device=device)[:, None, None, None]
    index_c = torch.arange(channels, device=device)[None, :, None, None]
    return pixels[index_b, index_c, source_rows[:, None, :, None], source_cols[:, None, None, :]]


def random_shift(pixels: torch.Tensor, max_pixels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``pixels`` each moved by its own offset in ``[-max_pixels, max_pixels]`` per axis (:func:`shift_images`)."""
    if max_pixels == 0:
        return pixels
    offsets = torch.randint(-max_pixels, max_pixels + 1, (2, len(pixels)), generator=generator)
    return shift_images(pixels, offsets[0], offsets[1])
