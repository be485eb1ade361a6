"""Invertible 1x1 convolution (Glow, section 3.2), plain or LU-parametrised.

The plain form needs ``slogdet`` in training; it does not export to ONNX, so
:meth:`InvertibleConv1x1.freeze` computes the weight and its log-determinant once,
in float64, and stores them as buffers that the exported graph reads as
constants. The LU form gets ``log|det W| = sum(log|s|)`` for free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.flows.base import Transform


class InvertibleConv1x1(Transform):
    def __init__(self, num_channels: int, lu: bool = True, seed: int | None = None) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.lu = lu
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, generator=generator))
        if lu:
            p, lower, upper = torch.linalg.lu(q)
            s = torch.diagonal(upper)
            self.register_buffer("perm", p)
            self.register_buffer("sign_s", torch.sign(s))
            self.register_buffer("lower_mask", torch.tril(torch.ones(num_channels, num_channels), -1))
            self.lower = nn.Parameter(lower)
            self.upper = nn.Parameter(torch.triu(upper, 1))
            self.log_s = nn.Parameter(torch.log(torch.abs(s)))
        else:
            self.weight = nn.Parameter(q)
        self.frozen = False

    def _weight_and_logdet(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen:
            return self.frozen_weight, self.frozen_logdet
        if self.lu:
            eye = torch.eye(self.num_channels, device=self.log_s.device, dtype=self.log_s.dtype)
            lower = self.lower * self.lower_mask + eye
            upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
            return self.perm @ lower @ upper, self.log_s.sum()
        return self.weight, torch.linalg.slogdet(self.weight)[1]

    @torch.no_grad()
    def freeze(self) -> None:
        """Fix the weight and its log-det as constants (for export and fast eval)."""
        self.frozen = False
        weight, _ = self._weight_and_logdet()
        weight64 = weight.double()
        logdet = torch.linalg.slogdet(weight64)[1]
        self.register_buffer("frozen_weight", weight64.to(weight.dtype), persistent=False)
        self.register_buffer("frozen_logdet", logdet.to(weight.dtype), persistent=False)
        self.frozen = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight, logdet = self._weight_and_logdet()
        y = F.conv2d(x, weight.view(self.num_channels, self.num_channels, 1, 1))
        return y, (logdet * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        weight, _ = self._weight_and_logdet()
        inv = torch.linalg.inv(weight.double()).to(weight.dtype)
        return F.conv2d(y, inv.view(self.num_channels, self.num_channels, 1, 1))


def freeze_invertible_convs(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, InvertibleConv1x1):
            module.freeze()
