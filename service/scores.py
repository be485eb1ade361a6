"""The OOD scores' pure math: what each score is computed from, and how ``combined`` joins its parts.

A flow's likelihood alone is not an OOD detector (FashionMNIST flows give MNIST
*higher* likelihood; constant images the highest of all). These functions turn
the flow's statistics into scores that do work; :class:`service.ood.Detector`
holds the fitted state they need and turns each score into a p-value.
Everything here is a function of its arguments, so it can be tested alone.

Scores, higher = more out-of-distribution (DESIGN.md, "Scores and calibration"):

``bpd``               the naive baseline the papers show failing
``typicality``        ``|bpd - mean held-out bpd|`` (Nalisnick et al. 2019)
``complexity``        ``bpd - L(x)/D`` with ``L(x)`` in bits (Serrà et al. 2020)
``orientation``       ``bpd - bpd(vertical flip)``: a flow trained on upright images
                      prefers them to their flips, so an upside-down image scores
                      high; only for calibrations made with the flipped pass
                      (``orientation``), which costs a second flow pass per image
``dose``              ``-log`` density of the statistics vector (per-level log p(z),
                      per-level log-det, ``L(x)/D``, ``orientation`` when the
                      calibration has it, and per-level latent energy, the mean
                      squared standardized latent, when it has ``latent_energy``:
                      the typicality of each level's latent, which ``log p(z)``
                      mixes with the prior's own scale) under a density fitted on
                      held-out data (Morningstar et al. 2021): a Gaussian
                      mixture (default), one Gaussian, or the paper's
                      per-feature KDE
``combined``          several scores together (by default ``dose`` and
                      ``complexity``; the parts are chosen at fit time and stored
                      in the calibration): each turned into tail evidence
                      ``-log p`` against its distribution on the fit part, then
                      the larger taken (rule ``max``) or all added up (rule
                      ``sum``, Fisher's method: evidence that several parts
                      show a little adds up) (``complexity`` sees MNIST-like
                      images that are too complex for their likelihood,
                      ``orientation`` upside-down ones, ``dose`` everything
                      else); opt-in at fit time, calibrated like every score
``likelihood_ratio``  ``bpd - background bpd``, with a second, *background* flow in the
                      bundle: a general-domain flow of the same architecture trained on
                      images in general (Schirrmeister et al. 2020; what ``oodgate-build``
                      attaches), so what both flows learn from local pixel statistics
                      cancels, or one trained on noise-perturbed in-distribution data
                      (Ren et al. 2019); only for bundles that ship a background graph,
                      and then one of ``combined``'s default parts
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .artifact import LATENT_ENERGY_OUTPUT

# the runtime's outputs beside the graph's own (service.runtimes adds them to every batch)
BACKGROUND_BPD = "background_bpd"  # bpd under the bundle's background graph
VFLIP_BPD = "vflip_bpd"  # bpd of the image flipped vertically (runtime with orientation on)

# in dependency order: `combined` comes after every score it may combine, so it reuses them
SCORE_NAMES = ("bpd", "typicality", "complexity", "orientation", "likelihood_ratio", "dose", "combined")
COMBINABLE = tuple(name for name in SCORE_NAMES if name != "combined")
NEEDS_FIT = frozenset({"typicality", "dose", "combined"})
NEEDS_COMPLEXITY = frozenset({"complexity", "dose", "combined"})
NEEDS_BACKGROUND = frozenset({"likelihood_ratio"})
NEEDS_ORIENTATION = frozenset({"orientation"})
COMBINED_PARTS = ("dose", "complexity")  # the default when the calibration has no orientation
ORIENTATION_COMBINED_PARTS = ("dose", "orientation")  # the default when the calibration has orientation
COMBINE_RULES = ("max", "sum")  # how combined joins its parts' tail evidence; "max" for calibrations without a rule


def orientation_score(stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """``bpd(x) - bpd(vflip(x))``: positive when the flow prefers the image upside down."""
    return np.asarray(stats["bpd"], dtype=np.float64) - np.asarray(stats[VFLIP_BPD], dtype=np.float64)


def dose_features(
    stats: Mapping[str, np.ndarray],
    complexity: np.ndarray,
    dims: int,
    orientation: bool = False,
    latent_energy: bool = False,
) -> np.ndarray:
    """The DoSE statistics vector per image: per-level log p(z) and log-det (per dim), then L(x)/D,
    then (``orientation``) ``bpd - bpd(vflip)``, then (``latent_energy``) each level's latent energy."""
    n = len(complexity)
    log_pz_levels = np.asarray(stats["log_pz_levels"], dtype=np.float64).reshape(n, -1)
    log_det_levels = np.asarray(stats["log_det_levels"], dtype=np.float64).reshape(n, -1)
    columns = [log_pz_levels / dims, log_det_levels / dims, (np.asarray(complexity, np.float64) / dims)[:, None]]
    if orientation:
        columns.append(orientation_score(stats)[:, None])
    if latent_energy:
        columns.append(np.asarray(stats[LATENT_ENERGY_OUTPUT], dtype=np.float64).reshape(n, -1))
    return np.concatenate(columns, axis=1)


def dose_feature_names(levels: int, orientation: bool = False, latent_energy: bool = False) -> list[str]:
    return (
        [f"log_pz_level{i + 1}/D" for i in range(levels)]
        + [f"log_det_level{i + 1}/D" for i in range(levels)]
        + ["L(x)/D"]
        + (["bpd-bpd(vflip)"] if orientation else [])
        + ([f"latent_energy_level{i + 1}" for i in range(levels)] if latent_energy else [])
    )


def finite_or_inf(scores: np.ndarray) -> np.ndarray:
    """A non-finite statistic means an image the flow cannot score: rank it as the most unusual."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(np.isfinite(scores), scores, np.inf)


def reference_spread(reference_sorted: np.ndarray) -> float:
    """The reference's interquartile range (1 when it has none): the unit of :func:`tail_evidence` past its max."""
    q75, q25 = np.percentile(reference_sorted, [75, 25])
    return float(q75 - q25) if q75 > q25 else 1.0


def tail_evidence(reference_sorted: np.ndarray, scores: np.ndarray, spread: float | None = None) -> np.ndarray:
    """``-log`` of the empirical upper-tail probability of each score under a reference sample.

    Past the reference's maximum it keeps growing by the excess in units of the
    reference's interquartile range, so extreme images stay ordered instead of tying.
    ``spread`` is that range when the caller has it already (the service scores every batch).
    """
    m = len(reference_sorted)
    # the rank interpolated between reference points: a continuous score, so conformal p-values see no ties
    rank = np.interp(scores, reference_sorted, np.arange(1.0, m + 1.0), left=0.0, right=float(m))
    if spread is None:
        spread = reference_spread(reference_sorted)
    with np.errstate(invalid="ignore"):
        beyond = np.maximum(scores - reference_sorted[-1], 0.0) / spread
    evidence = -np.log((m + 1.0 - rank) / (m + 1.0)) + beyond
    return np.where(np.isnan(scores), np.inf, evidence)
