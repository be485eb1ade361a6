"""The one contract every flow layer keeps, data to latent.

``forward(x) -> (y, logdet)`` with ``logdet`` of shape ``[B]`` holding
``log|det dy/dx|`` per example, and ``inverse(y) -> x``. Keeping the log-det a
per-example vector (never summed over the batch, never mixed with a prior term)
is what lets the architectures report it per scale level.
"""

from __future__ import annotations

import torch
from torch import nn


class Transform(nn.Module):
    """A bijection with a tractable log-determinant."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Sequential(Transform):
    """Composition: log-dets add up, the inverse runs the layers backwards."""

    def __init__(self, *transforms: Transform) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, step_logdet = transform(x)
            logdet = logdet + step_logdet
        return x, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for transform in reversed(self.transforms):
            y = transform.inverse(y)
        return y


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)
