"""The training objective and its validation: bpd at the bin midpoint, and the hinge against a nuisance transform.

:func:`negative_terms` is what a training step with ``negative`` adds to the loss;
:func:`evaluate_bpd` and :func:`evaluate_negative` measure the same quantities on
validation images, deterministically, as the exported graph scores them.
"""

from __future__ import annotations

import numpy as np
import torch

from service.artifact import bits_per_dim
from training.architectures import MultiScaleFlow
from training.config import NegativeSpec
from training.flows import dequantize

EVAL_BATCH_SIZE = 256  # images per validation forward pass: bounds memory, the mean is the same at any size


# the transforms negative training can push away from, on dequantized NCHW batches
NEGATIVE_TRANSFORMS = {"vflip": lambda x: torch.flip(x, dims=[-2])}


def negative_terms(
    model: MultiScaleFlow, x: torch.Tensor, spec: NegativeSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image ``bpd(x)``, ``bpd(t(x))`` and the hinge, from one forward pass over both halves.

    ``x`` is already dequantized, so ``t(x)`` carries the same dequantization noise
    moved with the pixels: the pair differs by the transform and nothing else.
    """
    n = len(x)
    log_pz, log_det = model(torch.cat([x, NEGATIVE_TRANSFORMS[spec.transform](x)]))
    bpd = bits_per_dim(log_pz.float().sum(1) + log_det.float().sum(1), model.dims)
    upright, transformed = bpd[:n], bpd[n:]
    return upright, transformed, torch.relu(spec.margin_bpd - (transformed - upright))


@torch.no_grad()
def evaluate_bpd(
    model: MultiScaleFlow, images: np.ndarray, device: torch.device, batch_size: int = EVAL_BATCH_SIZE
) -> float:
    """Mean bpd at the bin midpoint (deterministic, as the exported graph scores)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(images[start : start + batch_size]).to(device)
        log_pz, log_det = model(dequantize(pixels))
        bpd = bits_per_dim(log_pz.sum(1) + log_det.sum(1), model.dims)
        total += float(bpd.double().sum())
        count += len(pixels)
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def evaluate_negative(
    model: MultiScaleFlow,
    images: np.ndarray,
    device: torch.device,
    spec: NegativeSpec,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict[str, float]:
    """At the bin midpoint: mean bpd, mean hinge, and the share of images that beat their transformed copy."""
    model.eval()
    bpd, hinge, ahead = 0.0, 0.0, 0
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(images[start : start + batch_size]).to(device)
        upright, transformed, h = negative_terms(model, dequantize(pixels), spec)
        bpd += float(upright.double().sum())
        hinge += float(h.double().sum())
        ahead += int((transformed > upright).sum())
    model.train()
    n = max(len(images), 1)
    return {"bpd": bpd / n, "hinge": hinge / n, "beats_transformed": ahead / n}
