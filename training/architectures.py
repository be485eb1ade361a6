"""Multi-scale flows built from a config: Glow and RealNVP.

Both are a :class:`MultiScaleFlow`: a preprocessing transform, then levels of
``[squeeze] -> steps -> [split]``, then a learned top prior. The model reports
``log_pz`` and ``log_det`` per level and never mixes them: the prior of a
split-off half is that level's ``log_pz``; the preprocessing log-det counts
towards the first level's ``log_det``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from training.flows import (
    ActNorm,
    Coupling,
    InvertibleConv1x1,
    LearnedPrior,
    Sequential,
    Split,
    Squeeze,
    Transform,
    make_preprocess,
)


class FlowConfig(BaseModel):
    """Architecture hyper-parameters; recorded verbatim in the manifest."""

    model_config = ConfigDict(extra="forbid")

    architecture: Literal["glow", "realnvp"] = "glow"
    levels: int = Field(2, ge=1, description="scale levels; each after the first starts with a squeeze (Glow: all do)")
    steps: int = Field(8, ge=1, description="flow steps (Glow) or couplings (RealNVP) per level")
    hidden: int = Field(128, ge=1, description="st-network width")
    coupling: Literal["affine", "additive"] = Field("affine", description="additive = constant-volume CV-Glow")
    mask: Literal["channel", "checkerboard", "horizontal", "cycle"] = "channel"
    lu: bool = Field(True, description="LU-parametrised 1x1 convolutions (Glow)")
    actnorm: bool = Field(True, description="ActNorm before each coupling (RealNVP; Glow always has it)")
    bottleneck: int | None = Field(None, ge=1, description="st-network bottleneck width (Kirichenko app. K/L)")
    preprocess: Literal["center", "logit"] = "center"
    logit_alpha: float = Field(0.05, gt=0, lt=0.5)


@dataclass
class FlowResult:
    latents: list[torch.Tensor]
    log_pz_levels: torch.Tensor  # [B, L]
    log_det_levels: torch.Tensor  # [B, L]
    # [B, L]: per level, the mean squared standardized latent (1 for a typical draw; 0 for a level with no latent)
    latent_energy_levels: torch.Tensor

    @property
    def log_pz(self) -> torch.Tensor:
        return self.log_pz_levels.sum(dim=1)

    @property
    def log_det(self) -> torch.Tensor:
        return self.log_det_levels.sum(dim=1)

    @property
    def log_px(self) -> torch.Tensor:
        return self.log_pz + self.log_det


class Level(nn.Module):
    def __init__(self, squeeze: bool, steps: Sequential, split: Split | None) -> None:
        super().__init__()
        self.squeeze = Squeeze() if squeeze else None
        self.steps = steps
        self.split = split


class MultiScaleFlow(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        preprocess: Transform,
        levels: list[Level],
        top_shape: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.preprocess = preprocess
        self.levels = nn.ModuleList(levels)
        self.top_prior = LearnedPrior(top_shape)

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def dims(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    def transform(self, v: torch.Tensor) -> FlowResult:
        """Map dequantized images ``v`` in (0, 1) to latents, with per-level statistics."""
        h, logdet = self.preprocess(v)
        latents, log_pz, log_det, energy = [], [], [], []
        for index, level in enumerate(self.levels):
            if level.squeeze is not None:
                h, _ = level.squeeze(h)
            h, step_logdet = level.steps(h)
            log_det.append(logdet + step_logdet)
            logdet = torch.zeros_like(step_logdet)
            if level.split is not None:
                h, z, level_log_pz, level_energy = level.split(h)
                latents.append(z)
            elif index == len(self.levels) - 1:
                latents.append(h)
                level_log_pz, level_energy = self.top_prior.log_prob_and_energy(h)
            else:  # a level too thin to split (RealNVP's first, on one channel)
                level_log_pz, level_energy = torch.zeros_like(step_logdet), torch.zeros_like(step_logdet)
            log_pz.append(level_log_pz)
            energy.append(level_energy)
        return FlowResult(latents, torch.stack(log_pz, dim=1), torch.stack(log_det, dim=1), torch.stack(energy, dim=1))

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.transform(v)
        return result.log_pz_levels, result.log_det_levels

    def inverse(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """Latents (as returned by :meth:`transform`) back to ``v``."""
        h = latents[-1]
        split_latents = iter(reversed(latents[:-1]))
        for level in reversed(self.levels):
            if level.split is not None:
                h = level.split.inverse(h, next(split_latents))
            h = level.steps.inverse(h)
            if level.squeeze is not None:
                h = level.squeeze.inverse(h)
        return self.preprocess.inverse(h)

    def standardize(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        """Latents to standard-normal noise under their (conditional) priors.

        Split-off latents are conditioned on the tensor kept at their level, which
        has to be recomputed from the deeper latents, hence the walk top-down.
        """
        eps = [self.top_prior.standardize(latents[-1])]
        h = latents[-1]
        split_latents = list(latents[:-1])
        for level in reversed(self.levels):
            if level.split is not None:
                z = split_latents.pop()
                eps.insert(0, level.split.prior.standardize(z, h))
                h = level.split.inverse(h, z)
            h = level.steps.inverse(h)
            if level.squeeze is not None:
                h = level.squeeze.inverse(h)
        return eps

    def unstandardize_and_invert(self, eps: list[torch.Tensor]) -> torch.Tensor:
        """Standard-normal noise per latent to ``v`` (sampling, and Algorithm 1 of the semantics paper)."""
        h = self.top_prior.unstandardize(eps[-1])
        split_eps = iter(reversed(eps[:-1]))
        for level in reversed(self.levels):
            if level.split is not None:
                z = level.split.prior.unstandardize(next(split_eps), h)
                h = level.split.inverse(h, z)
            h = level.steps.inverse(h)
            if level.squeeze is not None:
                h = level.squeeze.inverse(h)
        return self.preprocess.inverse(h)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        shapes = self.latent_shapes()
        device = self.top_prior.mean.device
        eps = [temperature * torch.randn(n, *shape, device=device) for shape in shapes]
        return self.unstandardize_and_invert(eps)

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        c, h, w = self.input_shape
        shapes = []
        for level in self.levels:
            if level.squeeze is not None:
                c, h, w = c * 4, h // 2, w // 2
            if level.split is not None:
                shapes.append((c - level.split.keep, h, w))
                c = level.split.keep
        shapes.append((c, h, w))
        return shapes


def build_flow(config: FlowConfig, input_shape: tuple[int, int, int], seed: int = 0) -> MultiScaleFlow:
    """Build the architecture ``config`` names for images of ``input_shape`` (C, H, W)."""
    torch.manual_seed(seed)
    c, h, w = input_shape
    levels: list[Level] = []
    for index in range(config.levels):
        squeeze = config.architecture == "glow" or index > 0
        if squeeze:
            if h % 2 or w % 2:
                raise ValueError(f"level {index + 1} squeezes, but the tensor is {h}x{w}: use fewer levels")
            c, h, w = c * 4, h // 2, w // 2
        shape = (c, h, w)
        layers: list[Transform] = []
        for step in range(config.steps):
            if config.architecture == "glow" or config.actnorm:
                layers.append(ActNorm(c))
            if config.architecture == "glow":
                layers.append(InvertibleConv1x1(c, lu=config.lu, seed=seed * 1000 + index * 100 + step))
            layers.append(
                Coupling(
                    shape,
                    config.mask,
                    step,
                    config.hidden,
                    additive=config.coupling == "additive",
                    bottleneck=config.bottleneck,
                )
            )
        last = index == config.levels - 1
        split = None if last or c < 2 else Split(c)
        levels.append(Level(squeeze, Sequential(*layers), split))
        if split is not None:
            c = split.keep
    preprocess = make_preprocess(config.preprocess, config.logit_alpha)
    return MultiScaleFlow(input_shape, preprocess, levels, (c, h, w))
