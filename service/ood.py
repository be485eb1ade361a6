"""The OOD detector: one bundle's scores, conformal p-values and flags, the only decision path.

Training (``training.calibrate``) fits a :class:`Detector` on held-out
in-distribution images; the service, the evaluation report and the guarantee
checks apply the same object, so the numbers the report measures are the
numbers the service returns. The score math is :mod:`service.scores`, the
p-value formula :mod:`service.conformal`, the flag :mod:`service.decision`, and reading and writing the fitted
state (``calibration.npz`` plus ``manifest.calibration``) is
:mod:`service.calibration_file`.

Calibration is split conformal. The held-out slice (never trained on) is cut in
two with a fixed seed: scores that need a fit (``typicality``, ``dose``) are
fitted on the first part and calibrated on the second; scores that need no fit
calibrate on the whole slice. ``p = (1 + #{cal >= s}) / (n + 1)`` and
``ood = p <= alpha``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.artifact import LATENT_ENERGY_OUTPUT
from service.conformal import DEFAULT_ALPHA, check_level, conformal_p_values
from service.decision import Decision, flag_decisions, flags
from service.densities import DOSE_DENSITIES, fit_density
from service.scores import (
    BACKGROUND_BPD,
    COMBINABLE,
    COMBINE_RULES,
    COMBINED_PARTS,
    NEEDS_BACKGROUND,
    NEEDS_COMPLEXITY,
    NEEDS_FIT,
    NEEDS_ORIENTATION,
    ORIENTATION_COMBINED_PARTS,
    SCORE_NAMES,
    VFLIP_BPD,
    dose_features,
    finite_or_inf,
    orientation_score,
    reference_spread,
    tail_evidence,
)

DEFAULT_FIT_FRACTION = 0.4


class UnknownScoreError(ValueError):
    """A score was asked for that this model does not have (or cannot compute uncalibrated)."""


class CalibrationError(ValueError):
    """The calibration data cannot give a sound detector (too few images, non-finite statistics...)."""


def fit_and_calibration_parts(n: int, fit_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out positions :meth:`Detector.fit` fits on and those it calibrates on (sorted).

    One function, so a probe that re-scores the calibration part (``scripts/``) reads
    the very images the bundle's p-values were calibrated on.
    """
    n_fit = int(round(n * fit_fraction))
    if n_fit < 10 or n - n_fit < 10:
        raise CalibrationError(f"{n} held-out images are too few to fit on {n_fit} and calibrate on {n - n_fit}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n_fit]), np.sort(order[n_fit:])


class Detector:
    """Scores, conformal p-values and flags for one model bundle (alibi-detect style).

    ``fit`` on statistics of held-out in-distribution images, then ``score``,
    ``p_value`` and ``predict(alpha)`` on new ones. ``decide`` is the service's
    per-image form of ``predict``. ``stats`` is always the graph's outputs by
    name (batch-first arrays), plus ``"background_bpd"`` for bundles with a
    background graph and ``"vflip_bpd"`` when ``orientation`` is on (the
    runtime's flipped pass); ``complexity`` is :func:`service.complexity.complexity_bits`.
    ``latent_energy``: ``dose`` also reads the graph's ``latent_energy_levels``
    (graphs exported since that output was added; see :mod:`service.scores`).
    """

    def __init__(
        self,
        dims: int,
        levels: int,
        *,
        background: bool = False,
        orientation: bool = False,
        latent_energy: bool = False,
        dose_density: str = "gmm",
        default_score: str | None = None,
        default_alpha: float = DEFAULT_ALPHA,
    ) -> None:
        if dose_density not in DOSE_DENSITIES:
            raise ValueError(f"unknown dose density {dose_density!r}; choose one of {DOSE_DENSITIES}")
        self.dims = int(dims)
        self.levels = int(levels)
        self.background = bool(background)
        self.orientation = bool(orientation)
        self.latent_energy = bool(latent_energy)
        self.dose_density = dose_density
        self.default_alpha = check_level(default_alpha)
        self._default_score = default_score
        self.mean_bpd: float | None = None
        self.density = None
        self.calibration: dict[str, np.ndarray] = {}  # score name -> sorted calibration scores
        self.combined_parts: tuple[str, ...] = ()  # the scores whose tail evidence `combined` joins
        self.combine_rule = "max"  # ... by taking the larger ("max") or the sum ("sum")
        self.reference: dict[str, np.ndarray] = {}  # combined's parts -> sorted fit-part scores
        self._spreads: dict[str, tuple[np.ndarray, float]] = {}  # part -> (reference it belongs to, its IQR)
        self.info: dict[str, Any] = {}

    # -- what this detector offers ---------------------------------------------
    @property
    def fitted(self) -> bool:
        return bool(self.calibration)

    @property
    def score_names(self) -> tuple[str, ...]:
        if self.fitted:
            return tuple(name for name in SCORE_NAMES if name in self.calibration)
        return tuple(n for n in SCORE_NAMES if n not in NEEDS_FIT and self._has_inputs_for(n))

    def _has_inputs_for(self, name: str) -> bool:
        """Whether this bundle's runtime gives what ``name`` needs (a background graph, the flipped pass)."""
        if name in NEEDS_BACKGROUND and not self.background:
            return False
        return self.orientation or name not in NEEDS_ORIENTATION

    @property
    def default_score(self) -> str:
        if self._default_score in self.score_names:
            return self._default_score
        return "dose" if "dose" in self.score_names else "complexity"

    @default_score.setter
    def default_score(self, name: str) -> None:
        self._check_score(name)
        self._default_score = name

    @property
    def needs_complexity(self) -> bool:
        return any(name in NEEDS_COMPLEXITY for name in self.score_names)

    @property
    def needs_background(self) -> bool:
        return self.background

    @property
    def needs_orientation(self) -> bool:
        return self.orientation

    def _check_score(self, name: str) -> str:
        if name in self.score_names:
            return name
        if name in NEEDS_BACKGROUND and name in SCORE_NAMES and not self.background:
            why = "this model has no background flow"
        elif name in NEEDS_ORIENTATION and not self.orientation:
            why = "this model's calibration does not score flipped images (oodgate-calibrate --orientation)"
        elif name in NEEDS_FIT and name in SCORE_NAMES:
            why = "this model's calibration has no such score" if self.fitted else "this model carries no calibration"
        else:
            why = "no such score"
        raise UnknownScoreError(f"score {name!r} is not available ({why}); choose one of {list(self.score_names)}")

    # -- scores -------------------------------------------------------------------
    def _check_inputs(self, stats: Mapping[str, np.ndarray], complexity: np.ndarray | None, names) -> int:
        n = len(np.asarray(stats["bpd"]))
        if any(name in NEEDS_COMPLEXITY for name in names):
            if complexity is None:
                raise ValueError("complexity bits are needed (service.complexity.complexity_bits) but were not given")
            if len(complexity) != n:
                raise ValueError(f"{len(complexity)} complexity values for {n} images")
        if any(name in NEEDS_BACKGROUND for name in names) and BACKGROUND_BPD not in stats:
            raise ValueError(f"stats lack {BACKGROUND_BPD!r}: run the bundle's background graph")
        uses_dose = any(name in ("dose", "combined") for name in names)  # combined reads dose's statistics
        uses_flip = any(name in NEEDS_ORIENTATION for name in names) or (self.orientation and uses_dose)
        if uses_flip and VFLIP_BPD not in stats:
            raise ValueError(f"stats lack {VFLIP_BPD!r}: run the bundle's runtime with orientation on")
        if self.latent_energy and uses_dose and LATENT_ENERGY_OUTPUT not in stats:
            raise ValueError(f"stats lack {LATENT_ENERGY_OUTPUT!r}: this graph was exported without it")
        return n

    def _raw_score(
        self,
        name: str,
        stats: Mapping[str, np.ndarray],
        complexity: np.ndarray | None,
        known: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """One score's raw values; ``known`` holds scores already computed for these images."""
        bpd = np.asarray(stats["bpd"], dtype=np.float64)
        if name == "bpd":
            return bpd
        if name == "typicality":
            return np.abs(bpd - self.mean_bpd)
        if name == "complexity":
            return bpd - np.asarray(complexity, dtype=np.float64) / self.dims
        if name == "orientation":
            return orientation_score(stats)
        if name == "dose":
            features = self._dose_features(stats, complexity)
            finite = np.all(np.isfinite(features), axis=1)
            out = np.full(len(features), np.inf)
            if finite.any():
                out[finite] = -self.density.log_density(features[finite])
            return out
        if name == "combined":
            known = known or {}
            parts = [
                tail_evidence(
                    self.reference[p],
                    known[p] if p in known else self._raw_score(p, stats, complexity),
                    self._spread(p),
                )
                for p in self.combined_parts
            ]
            stacked = np.stack(parts)
            return stacked.sum(axis=0) if self.combine_rule == "sum" else stacked.max(axis=0)
        if name == "likelihood_ratio":
            return bpd - np.asarray(stats[BACKGROUND_BPD], dtype=np.float64)
        raise UnknownScoreError(name)

    def _spread(self, part: str) -> float:
        """The IQR of a combined part's reference, computed once per reference array."""
        reference = self.reference[part]
        cached = self._spreads.get(part)
        if cached is None or cached[0] is not reference:
            cached = (reference, reference_spread(reference))
            self._spreads[part] = cached
        return cached[1]

    def score(
        self,
        stats: Mapping[str, np.ndarray],
        complexity: np.ndarray | None = None,
        names: tuple[str, ...] | list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Every available score (or ``names``) per image; non-finite ones become ``+inf``."""
        names = tuple(self._check_score(n) for n in (names or self.score_names))
        self._check_inputs(stats, complexity, names)
        raw: dict[str, np.ndarray] = {}
        for name in names:  # in SCORE_NAMES order, so `combined` reuses its parts
            raw[name] = self._raw_score(name, stats, complexity, raw)
        return {name: finite_or_inf(raw[name]) for name in names}

    def p_values(self, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each score's conformal p-values against this model's calibration: the one place a score becomes one.

        Takes scores :meth:`score` computed, so the worker (once per batch) and the
        evaluation report (once per image set) pay for the scores once.
        """
        if not self.fitted:
            raise CalibrationError("this detector is not calibrated: there are no p-values")
        return {name: conformal_p_values(self.calibration[name], values) for name, values in scores.items()}

    def p_value(
        self, stats: Mapping[str, np.ndarray], complexity: np.ndarray | None = None, score: str | None = None
    ) -> np.ndarray:
        score = self._check_score(score or self.default_score)
        return self.p_values(self.score(stats, complexity, [score]))[score]

    def predict(
        self,
        stats: Mapping[str, np.ndarray],
        complexity: np.ndarray | None = None,
        alpha: float | None = None,
        score: str | None = None,
    ) -> dict[str, Any]:
        """``{"score", "alpha", "scores", "p_value", "is_ood"}`` for a batch, as arrays."""
        alpha = check_level(self.default_alpha if alpha is None else alpha)
        score = self._check_score(score or self.default_score)
        scores = self.score(stats, complexity)
        p_value = is_ood = None
        if self.fitted:
            p_value = self.p_values({score: scores[score]})[score]
            is_ood = flags(p_value, alpha)
        return {"score": score, "alpha": alpha, "scores": scores, "p_value": p_value, "is_ood": is_ood}

    def decide(
        self,
        stats: Mapping[str, np.ndarray],
        complexity: np.ndarray | None,
        score: str | None,
        alpha: float | None,
    ) -> list[Decision]:
        """The service's per-image verdicts (``alpha``/``score`` ``None``: the model's defaults)."""
        result = self.predict(stats, complexity, alpha=alpha, score=score)
        return flag_decisions(result["scores"], result["score"], result["p_value"], result["alpha"])

    # -- fitting ------------------------------------------------------------------
    def fit(
        self,
        stats: Mapping[str, np.ndarray],
        complexity: np.ndarray,
        *,
        fit_fraction: float = DEFAULT_FIT_FRACTION,
        seed: int = 0,
        combined: bool = False,
        combined_parts: tuple[str, ...] | list[str] | None = None,
        combine_rule: str | None = None,
    ) -> Detector:
        """Fit on held-out in-distribution images (never trained on, never the test split).

        A seeded permutation cuts the images into a fit part (``fit_fraction``)
        and a calibration part; scores that need no fit calibrate on all of them.
        ``combined`` adds the ``combined`` score (its references come from the fit part)
        over ``combined_parts`` (default ``dose, complexity``, or ``dose, orientation``
        when ``orientation`` is on; with a background flow, ``likelihood_ratio`` in
        place of ``complexity``: both are ``log p(x)`` against a general model of
        images, and a flow of images in general is the stronger compressor that
        Serrà et al. say the ratio needs), joined by ``combine_rule`` (``max`` or ``sum``;
        default :meth:`default_combine_rule`).
        """
        if combine_rule is None:
            combine_rule = self.default_combine_rule
        if combine_rule not in COMBINE_RULES:
            raise ValueError(f"combine_rule must be one of {COMBINE_RULES}, got {combine_rule!r}")
        needed = ("complexity",) + (("likelihood_ratio",) if self.background else ())
        n = self._check_inputs(stats, complexity, needed + ("dose",) + (("orientation",) if self.orientation else ()))
        if not 0.0 < fit_fraction < 1.0:
            raise ValueError(f"fit_fraction must lie in (0, 1), got {fit_fraction}")
        fit_idx, cal_idx = fit_and_calibration_parts(n, fit_fraction, seed)
        parts = self._combined_parts(combined_parts) if combined else ()
        bpd = np.asarray(stats["bpd"], dtype=np.float64)
        features = self._dose_features(stats, complexity)
        if not (np.all(np.isfinite(bpd)) and np.all(np.isfinite(features))):
            raise CalibrationError("held-out statistics contain non-finite values; the model cannot be calibrated")

        self.mean_bpd = float(bpd[fit_idx].mean())
        self.density = fit_density(self.dose_density, features[fit_idx])
        fit_stats = {key: np.asarray(value)[fit_idx] for key, value in stats.items()}
        self.reference = {}
        self.combined_parts = parts
        self.combine_rule = combine_rule
        for part in parts:
            self.reference[part] = np.sort(finite_or_inf(self._raw_score(part, fit_stats, complexity[fit_idx])))
        self.calibration = {}
        for name in SCORE_NAMES:
            if not self._has_inputs_for(name):
                continue
            if name == "combined" and not combined:
                continue
            scores = finite_or_inf(self._raw_score(name, stats, complexity))
            self.calibration[name] = np.sort(scores[cal_idx] if name in NEEDS_FIT else scores)
        self.info = {
            "fitted": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "n_holdout": int(n),
            "n_fit": len(fit_idx),
            "seed": int(seed),
            "fit_fraction": float(fit_fraction),
            "holdout_bpd_mean": float(bpd.mean()),
            "holdout_bpd_std": float(bpd.std()),
            "holdout_complexity_bpd_mean": float(np.mean(complexity) / self.dims),
        }
        if self.orientation:
            d = orientation_score(stats)
            self.info["holdout_orientation_mean"] = float(d.mean())
            self.info["holdout_orientation_std"] = float(d.std())
        return self

    def calibration_part(self, n: int) -> np.ndarray:
        """Positions, among the ``n`` held-out images :meth:`fit` saw, of those its fitted scores calibrated on."""
        return fit_and_calibration_parts(n, float(self.info["fit_fraction"]), int(self.info.get("seed", 0)))[1]

    def _dose_features(self, stats: Mapping[str, np.ndarray], complexity: np.ndarray) -> np.ndarray:
        return dose_features(stats, complexity, self.dims, self.orientation, self.latent_energy)

    @property
    def default_combine_rule(self) -> str:
        """``sum`` (Fisher's method) with a background flow, else ``max``.

        A near-OOD image (another icon theme, say) is a little unusual in the
        flow's statistics *and* a little more likely under the general model: two
        weak signals that add up, where the larger of them stays lost among the
        in-distribution images' own outliers. Measured on the tune sets only
        (``models/clipart-glow/README.md``); without a background the parts
        (``dose`` and ``complexity`` or ``orientation``) catch different images,
        and ``max`` keeps each one's catch whole.
        """
        return "sum" if self.background else "max"

    def _combined_parts(self, parts: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
        if parts is None:
            parts = ORIENTATION_COMBINED_PARTS if self.orientation else COMBINED_PARTS
            if self.background:  # the learned general model replaces the PNG compressor as L(x) (same ratio)
                parts = tuple(p for p in parts if p != "complexity") + ("likelihood_ratio",)
            return parts
        parts = tuple(dict.fromkeys(parts))
        for part in parts:
            if part not in COMBINABLE:
                raise ValueError(f"combined cannot combine {part!r}; choose among {list(COMBINABLE)}")
            if not self._has_inputs_for(part):
                raise ValueError(f"combined cannot use {part!r}: this model's runtime does not give its inputs")
        if len(parts) < 2:
            raise ValueError(f"combined needs at least two parts, got {list(parts)}")
        return parts
