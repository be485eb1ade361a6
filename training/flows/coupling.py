"""Affine (Glow's sigmoid scale) and additive (CV-Glow, constant volume) couplings.

Masked form: ``y = x`` outside ``target``; inside it ``y = (x + t) * s`` (affine)
or ``y = x + t`` (additive), with ``s, t`` predicted from ``x * condition``. One
implementation serves every mask type, the cycle-mask included, whose target is
not the complement of its condition.
"""

from __future__ import annotations

import torch

from training.flows.base import Transform, sum_except_batch
from training.flows.masks import coupling_masks
from training.flows.nets import STNet


def export_safe_logsigmoid(t: torch.Tensor) -> torch.Tensor:
    """``log(sigmoid(t))`` written so that no exporter can make it underflow.

    The ONNX exporter decomposes ``logsigmoid`` into ``Log(Sigmoid(t))``; in float32
    ``Sigmoid`` is 0 below about -104 and the log-det becomes ``-inf`` (seen on a
    vertically flipped held-out FashionMNIST image). ``min(t, 0) - log(1 + exp(-|t|))``
    is exact, and the log's argument stays in (1, 2].
    """
    return torch.minimum(t, torch.zeros_like(t)) - torch.log1p(torch.exp(-t.abs()))


class Coupling(Transform):
    def __init__(
        self,
        shape: tuple[int, int, int],
        mask: str,
        index: int,
        hidden: int,
        additive: bool = False,
        bottleneck: int | None = None,
    ) -> None:
        super().__init__()
        c, h, w = shape
        cond, target = coupling_masks(mask, shape, index)
        self.register_buffer("cond_mask", cond.unsqueeze(0))
        self.register_buffer("target_mask", target.unsqueeze(0))
        self.additive = additive
        self.net = STNet(c, c if additive else 2 * c, hidden, (h, w), bottleneck)

    def _shift_and_log_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x * self.cond_mask)
        if self.additive:
            return out, torch.zeros_like(out)
        shift, raw = out.chunk(2, dim=1)
        # Glow: s = sigmoid(raw + 2) starts near 0.88 and stays in (0, 1).
        log_scale = export_safe_logsigmoid(raw.float() + 2.0).to(x.dtype)
        return shift, log_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, log_scale = self._shift_and_log_scale(x)
        log_scale = log_scale * self.target_mask
        y = x + self.target_mask * ((x + shift) * torch.exp(log_scale) - x)
        return y, sum_except_batch(log_scale)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        shift, log_scale = self._shift_and_log_scale(y)  # condition part is unchanged
        log_scale = log_scale * self.target_mask
        x = y * torch.exp(-log_scale) - shift
        return y + self.target_mask * (x - y)
