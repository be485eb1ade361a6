"""Coupling masks: which inputs a coupling layer sees and which it transforms.

A mask pair is ``(condition, target)``, two disjoint 0/1 tensors of shape
``[C, H, W]``. Checkerboard, channel-wise and horizontal masks transform the
complement of what they condition on, alternating with ``index``. Kirichenko et
al.'s cycle-mask (appendix L.1) splits the image into four quadrants and lets
coupling ``k`` update quadrant ``k+1`` from quadrant ``k`` only, so information
needs four couplings to come back to where it started.
"""

from __future__ import annotations

import torch

MASK_TYPES = ("checkerboard", "channel", "horizontal", "cycle")


def coupling_masks(kind: str, shape: tuple[int, int, int], index: int) -> tuple[torch.Tensor, torch.Tensor]:
    c, h, w = shape
    if kind == "checkerboard":
        rows = torch.arange(h).view(h, 1)
        cols = torch.arange(w).view(1, w)
        cond = ((rows + cols + index) % 2 == 0).float().expand(c, h, w)
    elif kind == "channel":
        if c < 2:
            raise ValueError("a channel-wise mask needs at least 2 channels (squeeze first)")
        first = (torch.arange(c) < c // 2).float()
        if index % 2:
            first = 1.0 - first
        cond = first.view(c, 1, 1).expand(c, h, w)
    elif kind == "horizontal":
        if h < 2:
            raise ValueError("a horizontal mask needs a height of at least 2")
        top = (torch.arange(h) < h // 2).float()
        if index % 2:
            top = 1.0 - top
        cond = top.view(1, h, 1).expand(c, h, w)
    elif kind == "cycle":
        if h < 2 or w < 2:
            raise ValueError("a cycle mask needs height and width of at least 2")
        quadrant = _quadrants(h, w)
        source = index % 4
        cond = (quadrant == source).float().expand(c, h, w)
        target = (quadrant == (source + 1) % 4).float().expand(c, h, w)
        return cond.contiguous(), target.contiguous()
    else:
        raise ValueError(f"unknown mask type {kind!r}; choose one of {', '.join(MASK_TYPES)}")
    return cond.contiguous(), (1.0 - cond).contiguous()


def _quadrants(h: int, w: int) -> torch.Tensor:
    """Quadrant ids in cycle order: top-left 0, top-right 1, bottom-right 2, bottom-left 3."""
    top = torch.arange(h).view(h, 1) < h // 2
    left = torch.arange(w).view(1, w) < w // 2
    ids = torch.empty(h, w, dtype=torch.long)
    ids[top & left] = 0
    ids[top & ~left] = 1
    ids[~top & ~left] = 2
    ids[~top & left] = 3
    return ids
