"""Squeeze (space to depth) and the multi-scale split with a learned prior.

The split is not a :class:`Transform`: it hands half of the tensor to the prior
and keeps the other half. Its prior's log-density is a ``log_pz`` term of its
level, so it is returned separately and never added to a log-det.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.flows.base import Transform, sum_except_batch

LOG_2PI = math.log(2 * math.pi)


class Squeeze(Transform):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, c * 4, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = y.shape
        x = y.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, h * 2, w * 2)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    return gaussian_log_prob_and_energy(z, mean, log_std)[0]


def gaussian_log_prob_and_energy(
    z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log N(z; mean, std)`` and the latent's energy: the mean of its squared standardized values.

    The energy is what a typicality test of the latent looks at (a typical draw has
    energy near 1): ``log_pz`` alone mixes it with ``-sum(log_std)``, the prior's own
    confidence, so an image whose latent is atypically *small* under a broad prior
    can score the same ``log_pz`` as a typical one under a narrow prior.
    """
    eps_sq = (z - mean) ** 2 * torch.exp(-2 * log_std)
    log_prob = sum_except_batch(-0.5 * (LOG_2PI + 2 * log_std + eps_sq))
    return log_prob, eps_sq.flatten(1).mean(dim=1)


class ConditionalPrior(nn.Module):
    """N(z; mean(h), std(h)) with mean and log-std from a zero-initialised conv of ``h``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.conv(h).chunk(2, dim=1)
        return mean, log_std

    def log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.params(h)
        return gaussian_log_prob(z, mean, log_std)

    def log_prob_and_energy(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.params(h)
        return gaussian_log_prob_and_energy(z, mean, log_std)

    def sample(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        mean, log_std = self.params(h)
        return mean + temperature * torch.exp(log_std) * torch.randn_like(mean)

    def standardize(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.params(h)
        return (z - mean) * torch.exp(-log_std)

    def unstandardize(self, eps: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.params(h)
        return mean + eps * torch.exp(log_std)


class LearnedPrior(nn.Module):
    """The top prior: a diagonal Gaussian with a learned mean and std per latent unit."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, *shape))
        self.log_std = nn.Parameter(torch.zeros(1, *shape))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(z, self.mean, self.log_std)

    def log_prob_and_energy(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_log_prob_and_energy(z, self.mean, self.log_std)

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        eps = torch.randn(n, *self.mean.shape[1:], device=self.mean.device)
        return self.mean + temperature * torch.exp(self.log_std) * eps

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) * torch.exp(-self.log_std)

    def unstandardize(self, eps: torch.Tensor) -> torch.Tensor:
        return self.mean + eps * torch.exp(self.log_std)


class Split(nn.Module):
    """Keep the first half of the channels, send the second half to a prior conditioned on the first."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.keep = channels // 2
        self.prior = ConditionalPrior(self.keep, channels - self.keep)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(kept, z, log_pz, energy)`` (see :func:`gaussian_log_prob_and_energy`)."""
        kept, z = x[:, : self.keep], x[:, self.keep :]
        return kept, z, *self.prior.log_prob_and_energy(z, kept)

    def inverse(self, kept: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([kept, z], dim=1)
