"""From raw pixels to the flow's input, inside the graph.

``dequantize`` maps uint8 pixels into ``(0, 1)``: at the bin midpoint for scoring
(deterministic, so an image always gets the same numbers) or with uniform noise
for training. What comes after (centering for Glow, the logit transform for
RealNVP) is a :class:`Transform` whose log-det counts towards ``log_det``, so that
``log_pz + log_det`` is the density of the dequantized image in ``(0, 1)^D``.
"""

from __future__ import annotations

import math

import torch

from training.flows.base import Transform, sum_except_batch


def dequantize(pixels: torch.Tensor, noise: bool = False) -> torch.Tensor:
    x = pixels.float()
    offset = torch.rand_like(x) if noise else 0.5
    return (x + offset) / 256.0


class Center(Transform):
    """``v - 0.5``: Glow's input range [-0.5, 0.5], volume preserving."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x - 0.5, x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y + 0.5


class Logit(Transform):
    """RealNVP's ``logit(alpha + (1 - 2 alpha) v)``, which keeps the logit finite at 0 and 1."""

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(p) - torch.log1p(-p)
        logdet = sum_except_batch(math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p))
        return y, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)


def make_preprocess(name: str, alpha: float = 0.05) -> Transform:
    if name == "center":
        return Center()
    if name == "logit":
        return Logit(alpha)
    raise ValueError(f"unknown preprocessing {name!r}; choose 'center' or 'logit'")
