"""Synthetic flow statistics whose right OOD answers are known, for the detector's and calibration's tests."""

from __future__ import annotations

import numpy as np

from service.artifact import LATENT_ENERGY_OUTPUT
from service.scores import BACKGROUND_BPD, VFLIP_BPD

D = 784
LN2 = np.log(2.0)


def make_stats(
    n: int,
    rng: np.random.Generator,
    *,
    complexity_bpd: float = 4.0,
    complexity_spread: float = 0.4,
    gap: float = -0.8,
    det_shift: float = 0.0,
    background_gap: float = 0.1,
    flip_gap: float = -0.17,
    energy_level1: float = 1.0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Flow-like statistics: bpd tracks L(x)/D (the papers' finding) and log p(x) splits into levels.

    ``gap`` is bpd - L(x)/D; ``det_shift`` moves nats per dim from log p(z) into
    log-det without changing log p(x) (only DoSE can see it); ``background_gap``
    is bpd - background bpd; ``flip_gap`` is bpd - bpd(vertical flip) (upright images: negative,
    the flow prefers them to their flips); ``energy_level1`` is the first level's mean latent energy
    (1 for typical latents; near 0 for a latent zeroed and inverted, whose ``log p(z)`` the prior's
    scale can hide: here it moves nothing else).
    """
    complexity = (complexity_bpd + complexity_spread * rng.standard_normal(n)) * D
    bpd = complexity / D + gap + 0.05 * rng.standard_normal(n)
    log_px = -(bpd * D * LN2 - D * np.log(256.0))
    log_det = (1.0 + det_shift + 0.02 * rng.standard_normal(n)) * D
    log_pz = log_px - log_det
    share = 0.6 + 0.01 * rng.standard_normal(n)
    stats = {
        "log_pz": log_pz.astype(np.float32),
        "log_det": log_det.astype(np.float32),
        "log_px": log_px.astype(np.float32),
        "bpd": bpd.astype(np.float32),
        "log_pz_levels": np.stack([share * log_pz, (1 - share) * log_pz], 1).astype(np.float32),
        "log_det_levels": np.stack([0.7 * log_det, 0.3 * log_det], 1).astype(np.float32),
        BACKGROUND_BPD: (bpd - background_gap - 0.02 * rng.standard_normal(n)).astype(np.float32),
        VFLIP_BPD: (bpd - flip_gap - 0.1 * rng.standard_normal(n)).astype(np.float32),
        # the mean of m squared standard normals: 1 with spread sqrt(2/m), m = 392 units per level
        LATENT_ENERGY_OUTPUT: np.stack(
            [energy_level1 * rng.chisquare(392, n) / 392, rng.chisquare(392, n) / 392], 1
        ).astype(np.float32),
    }
    return stats, complexity
