"""The st-network that predicts a coupling layer's shift and scale.

Optionally with Kirichenko et al.'s bottleneck (appendix K/L): two fully
connected layers to ``bottleneck`` units and back, after the middle layer, so
the network cannot copy local pixel correlations through to its output. The
last convolution starts at zero, so every coupling starts as the identity.
"""

from __future__ import annotations

import torch
from torch import nn


class STNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int,
        spatial: tuple[int, int],
        bottleneck: int | None = None,
    ) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU())
        self.middle = nn.Sequential(nn.Conv2d(hidden, hidden, 1), nn.ReLU())
        self.bottleneck = None
        if bottleneck:
            flat = hidden * spatial[0] * spatial[1]
            self.bottleneck = nn.Sequential(
                nn.Flatten(), nn.Linear(flat, bottleneck), nn.ReLU(), nn.Linear(bottleneck, flat), nn.ReLU()
            )
        self.last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.first(x))
        if self.bottleneck is not None:
            h = self.bottleneck(h).view_as(h)
        return self.last(h)
