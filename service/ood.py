"""Calibrated out-of-distribution scores: the one definition of the OOD math, fit and apply.

A flow's likelihood alone is not an OOD detector (FashionMNIST flows give MNIST
*higher* likelihood; constant images the highest of all). This module turns the
flow's statistics into scores that do work, and each score into a conformal
p-value and a flag whose false-positive rate on in-distribution images is
bounded by ``alpha``. Training (``training.calibrate``) fits a :class:`Detector`
with it and the service applies the same object, so the numbers the evaluation
report measures are the numbers the service returns.

Scores, higher = more out-of-distribution (DESIGN.md, "Scores and calibration"):

``bpd``               the naive baseline the papers show failing
``typicality``        ``|bpd - mean held-out bpd|`` (Nalisnick et al. 2019)
``complexity``        ``bpd - L(x)/D`` with ``L(x)`` in bits (Serrà et al. 2020)
``orientation``       ``bpd - bpd(vertical flip)``: a flow trained on upright images
                      prefers them to their flips, so an upside-down image scores
                      high; only for calibrations made with the flipped pass
                      (``orientation``), which costs a second flow pass per image
``dose``              ``-log`` density of the statistics vector (per-level log p(z),
                      per-level log-det, ``L(x)/D``, and ``orientation`` when the
                      calibration has it) under a density fitted on
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

Calibration is split conformal. The held-out slice (never trained on) is cut in
two with a fixed seed: scores that need a fit (``typicality``, ``dose``) are
fitted on the first part and calibrated on the second; scores that need no fit
calibrate on the whole slice. ``p = (1 + #{cal >= s}) / (n + 1)`` and
``ood = p <= alpha``.

The fitted state is plain float64 arrays in ``calibration.npz`` next to the
manifest (listed in its ``files``, so its sha256 is checked on load) plus a small
JSON summary in ``manifest.calibration``: nothing is ever pickled. Format 2
added ``orientation`` and ``combined.parts`` to the summary; a format-1
calibration reads as orientation off and parts ``(dose, complexity)``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.artifact import ArtifactError, Manifest, file_entry, write_manifest
from service.densities import DOSE_DENSITIES, density_from_arrays, fit_density

CALIBRATION_FILE = "calibration.npz"
CALIBRATION_KEY = "calibration"
CALIBRATION_METHOD = "split-conformal"
CALIBRATION_FORMAT = 2
READABLE_FORMATS = (1, 2)
BACKGROUND_ONNX_KEY = "background_onnx"
BACKGROUND_TORCHSCRIPT_KEY = "background_torchscript"
BACKGROUND_BPD = "background_bpd"
VFLIP_BPD = "vflip_bpd"  # bpd of the image flipped vertically (runtime with orientation on)

# in dependency order: `combined` comes after every score it may combine, so it reuses them
SCORE_NAMES = ("bpd", "typicality", "complexity", "orientation", "likelihood_ratio", "dose", "combined")
COMBINABLE = tuple(name for name in SCORE_NAMES if name != "combined")
NEEDS_FIT = frozenset({"typicality", "dose", "combined"})
NEEDS_COMPLEXITY = frozenset({"complexity", "dose", "combined"})
COMBINED_PARTS = ("dose", "complexity")  # the default, and what every format-1 calibration used
ORIENTATION_COMBINED_PARTS = ("dose", "orientation")  # the default when the calibration has orientation
COMBINE_RULES = ("max", "sum")  # how combined joins its parts' tail evidence; "max" for calibrations without a rule
NEEDS_BACKGROUND = frozenset({"likelihood_ratio"})
NEEDS_ORIENTATION = frozenset({"orientation"})
DEFAULT_ALPHA = 0.05
DEFAULT_FIT_FRACTION = 0.4


class UnknownScoreError(ValueError):
    """A score was asked for that this model does not have (or cannot compute uncalibrated)."""


class CalibrationError(ValueError):
    """The calibration data cannot give a sound detector (too few images, non-finite statistics...)."""


@dataclass
class Decision:
    """One image's verdict: every score, the one that decides, its p-value and the flag.

    ``p_value`` and ``ood`` are ``None`` when the bundle carries no calibration:
    an uncalibrated model never gets a made-up flag.
    """

    scores: dict[str, float]
    score: str
    p_value: float | None
    ood: bool | None


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (0.0 < alpha < 1.0) or math.isnan(alpha):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    return alpha


# --------------------------------------------------------------------------- statistics


def orientation_score(stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """``bpd(x) - bpd(vflip(x))``: positive when the flow prefers the image upside down."""
    return np.asarray(stats["bpd"], dtype=np.float64) - np.asarray(stats[VFLIP_BPD], dtype=np.float64)


def dose_features(
    stats: Mapping[str, np.ndarray], complexity: np.ndarray, dims: int, orientation: bool = False
) -> np.ndarray:
    """The DoSE statistics vector per image: per-level log p(z) and log-det (per dim), then L(x)/D,
    then (``orientation``) ``bpd - bpd(vflip)``."""
    log_pz_levels = np.asarray(stats["log_pz_levels"], dtype=np.float64).reshape(len(complexity), -1)
    log_det_levels = np.asarray(stats["log_det_levels"], dtype=np.float64).reshape(len(complexity), -1)
    columns = [log_pz_levels / dims, log_det_levels / dims, (np.asarray(complexity, np.float64) / dims)[:, None]]
    if orientation:
        columns.append(orientation_score(stats)[:, None])
    return np.concatenate(columns, axis=1)


def dose_feature_names(levels: int, orientation: bool = False) -> list[str]:
    return (
        [f"log_pz_level{i + 1}/D" for i in range(levels)]
        + [f"log_det_level{i + 1}/D" for i in range(levels)]
        + ["L(x)/D"]
        + (["bpd-bpd(vflip)"] if orientation else [])
    )


def _finite_or_inf(scores: np.ndarray) -> np.ndarray:
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


def conformal_p_values(calibration_sorted: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(1 + #{cal >= s}) / (n + 1)`` for each score, against sorted calibration scores."""
    n = len(calibration_sorted)
    at_least = n - np.searchsorted(calibration_sorted, scores, side="left")
    return (1.0 + at_least) / (n + 1.0)


# --------------------------------------------------------------------------- detector


class Detector:
    """Scores, conformal p-values and flags for one model bundle (alibi-detect style).

    ``fit`` on statistics of held-out in-distribution images, then ``score``,
    ``p_value`` and ``predict(alpha)`` on new ones. ``decide`` is the service's
    per-image form of ``predict``. ``stats`` is always the graph's outputs by
    name (batch-first arrays), plus ``"background_bpd"`` for bundles with a
    background graph and ``"vflip_bpd"`` when ``orientation`` is on (the
    runtime's flipped pass); ``complexity`` is :func:`service.complexity.complexity_bits`.
    """

    def __init__(
        self,
        dims: int,
        levels: int,
        *,
        background: bool = False,
        orientation: bool = False,
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
        self.dose_density = dose_density
        self.default_alpha = check_alpha(default_alpha)
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
        uses_flip = any(name in NEEDS_ORIENTATION for name in names) or (
            self.orientation and any(name in ("dose", "combined") for name in names)
        )
        if uses_flip and VFLIP_BPD not in stats:
            raise ValueError(f"stats lack {VFLIP_BPD!r}: run the bundle's runtime with orientation on")
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
            features = dose_features(stats, complexity, self.dims, self.orientation)
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
        return {name: _finite_or_inf(raw[name]) for name in names}

    def p_value(
        self, stats: Mapping[str, np.ndarray], complexity: np.ndarray | None = None, score: str | None = None
    ) -> np.ndarray:
        score = self._check_score(score or self.default_score)
        if not self.fitted:
            raise CalibrationError("this detector is not calibrated: there are no p-values")
        return conformal_p_values(self.calibration[score], self.score(stats, complexity, [score])[score])

    def predict(
        self,
        stats: Mapping[str, np.ndarray],
        complexity: np.ndarray | None = None,
        alpha: float | None = None,
        score: str | None = None,
    ) -> dict[str, Any]:
        """``{"score", "alpha", "scores", "p_value", "is_ood"}`` for a batch, as arrays."""
        alpha = check_alpha(self.default_alpha if alpha is None else alpha)
        score = self._check_score(score or self.default_score)
        scores = self.score(stats, complexity)
        p_value = is_ood = None
        if self.fitted:
            p_value = conformal_p_values(self.calibration[score], scores[score])
            is_ood = p_value <= alpha
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
        names = list(result["scores"])
        columns = [result["scores"][name].tolist() for name in names]
        decisions = []
        for i, row in enumerate(zip(*columns, strict=True)):
            p_value = None if result["p_value"] is None else float(result["p_value"][i])
            ood = None if result["is_ood"] is None else bool(result["is_ood"][i])
            decisions.append(Decision(dict(zip(names, row, strict=True)), result["score"], p_value, ood))
        return decisions

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
        n = self._check_inputs(stats, complexity, needed + (("orientation",) if self.orientation else ()))
        if not 0.0 < fit_fraction < 1.0:
            raise ValueError(f"fit_fraction must lie in (0, 1), got {fit_fraction}")
        n_fit = int(round(n * fit_fraction))
        if n_fit < 10 or n - n_fit < 10:
            raise CalibrationError(f"{n} held-out images are too few to fit on {n_fit} and calibrate on {n - n_fit}")
        parts = self._combined_parts(combined_parts) if combined else ()
        bpd = np.asarray(stats["bpd"], dtype=np.float64)
        features = dose_features(stats, complexity, self.dims, self.orientation)
        if not (np.all(np.isfinite(bpd)) and np.all(np.isfinite(features))):
            raise CalibrationError("held-out statistics contain non-finite values; the model cannot be calibrated")
        order = np.random.default_rng(seed).permutation(n)
        fit_idx, cal_idx = np.sort(order[:n_fit]), np.sort(order[n_fit:])

        self.mean_bpd = float(bpd[fit_idx].mean())
        self.density = fit_density(self.dose_density, features[fit_idx])
        fit_stats = {key: np.asarray(value)[fit_idx] for key, value in stats.items()}
        self.reference = {}
        self.combined_parts = parts
        self.combine_rule = combine_rule
        for part in parts:
            self.reference[part] = np.sort(_finite_or_inf(self._raw_score(part, fit_stats, complexity[fit_idx])))
        self.calibration = {}
        for name in SCORE_NAMES:
            if not self._has_inputs_for(name):
                continue
            if name == "combined" and not combined:
                continue
            scores = _finite_or_inf(self._raw_score(name, stats, complexity))
            self.calibration[name] = np.sort(scores[cal_idx] if name in NEEDS_FIT else scores)
        self.info = {
            "fitted": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "n_holdout": int(n),
            "n_fit": int(n_fit),
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

    # -- persistence ----------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON summary for ``manifest.calibration``, float64 arrays for ``calibration.npz``)."""
        if not self.fitted:
            raise CalibrationError("nothing to save: the detector is not fitted")
        arrays = {f"cal__{name}": values for name, values in self.calibration.items()}
        arrays.update({f"dose__{key}": value for key, value in self.density.arrays().items()})
        arrays["typicality__mean_bpd"] = np.array(self.mean_bpd)
        arrays.update({f"ref__{name}": values for name, values in self.reference.items()})
        summary = {
            "method": CALIBRATION_METHOD,
            "format": CALIBRATION_FORMAT,
            "file": CALIBRATION_KEY,
            "scores": list(self.score_names),
            "default_score": self.default_score,
            "default_alpha": self.default_alpha,
            "background": self.background,
            "orientation": self.orientation,
            "n_calibration": {name: int(len(values)) for name, values in self.calibration.items()},
            "typicality": {"mean_bpd": self.mean_bpd},
            "dose": {"density": self.dose_density, "features": dose_feature_names(self.levels, self.orientation)},
            **(
                {"combined": {"parts": list(self.combined_parts), "rule": self.combine_rule}}
                if self.combined_parts
                else {}
            ),
            **self.info,
        }
        return summary, {key: np.asarray(value, dtype=np.float64) for key, value in arrays.items()}

    @classmethod
    def from_state(
        cls, dims: int, levels: int, summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> Detector:
        if summary.get("method") != CALIBRATION_METHOD or summary.get("format") not in READABLE_FORMATS:
            raise ArtifactError(
                f"calibration is {summary.get('method')!r} format {summary.get('format')!r}; this oodgate reads "
                f"{CALIBRATION_METHOD!r} formats {list(READABLE_FORMATS)}"
            )
        detector = cls(
            dims,
            levels,
            background=bool(summary.get("background", False)),
            orientation=bool(summary.get("orientation", False)),
            dose_density=summary["dose"]["density"],
            default_score=summary.get("default_score"),
            default_alpha=summary.get("default_alpha", DEFAULT_ALPHA),
        )
        detector.mean_bpd = float(arrays["typicality__mean_bpd"])
        prefix = "dose__"
        detector.density = density_from_arrays(
            detector.dose_density, {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        )
        detector.calibration = {k[len("cal__") :]: np.asarray(v) for k, v in arrays.items() if k.startswith("cal__")}
        detector.reference = {k[len("ref__") :]: np.asarray(v) for k, v in arrays.items() if k.startswith("ref__")}
        if "combined" in detector.calibration:
            detector.combined_parts = tuple(summary.get("combined", {}).get("parts", COMBINED_PARTS))
            detector.combine_rule = summary.get("combined", {}).get("rule", "max")
            if detector.combine_rule not in COMBINE_RULES:
                raise ArtifactError(f"combined rule {detector.combine_rule!r} is not one of {COMBINE_RULES}")
            if set(detector.reference) != set(detector.combined_parts):
                raise ArtifactError("calibration has the combined score but not its references")
        expected = len(dose_feature_names(levels, detector.orientation))
        if detector.density.dims != expected:
            raise ArtifactError(f"the dose density has {detector.density.dims} features, this calibration {expected}")
        missing = {name for name in summary.get("scores", []) if name not in detector.calibration}
        if missing:
            raise ArtifactError(f"calibration file lacks calibration scores for {sorted(missing)}")
        keep = ("fitted", "n_holdout", "n_fit", "seed", "fit_fraction", "holdout_sha256", "runtime")
        detector.info = {k: summary[k] for k in summary if k in keep or k.startswith("holdout_")}
        return detector

    def save(self, bundle_dir: str | Path, manifest: Manifest, extra: Mapping[str, Any] | None = None) -> Manifest:
        """Write ``calibration.npz`` into the bundle and the summary into its manifest (sha256 kept in step)."""
        bundle_dir = Path(bundle_dir)
        summary, arrays = self.state()
        summary.update(extra or {})
        path = bundle_dir / CALIBRATION_FILE
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        files = dict(manifest.files)
        files[CALIBRATION_KEY] = file_entry(bundle_dir, CALIBRATION_FILE)
        updated = manifest.model_copy(update={"calibration": summary, "files": files})
        write_manifest(bundle_dir, updated)
        return updated

    @classmethod
    def from_bundle(cls, manifest: Manifest, bundle_dir: str | Path) -> Detector:
        """The bundle's detector: calibrated when the manifest says so, else raw scores and no flags."""
        bundle_dir = Path(bundle_dir)
        background = BACKGROUND_ONNX_KEY in manifest.files or BACKGROUND_TORCHSCRIPT_KEY in manifest.files
        dims, levels = manifest.input.dims, manifest.levels
        if not manifest.calibration:
            return cls(dims, levels, background=background)
        key = manifest.calibration.get("file", CALIBRATION_KEY)
        if key not in manifest.files:
            raise ArtifactError(f"{bundle_dir}: manifest.calibration names file {key!r}, which 'files' does not list")
        path = bundle_dir / manifest.files[key].path
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read calibration {path}: {exc}") from exc
        detector = cls.from_state(dims, levels, manifest.calibration, arrays)
        if detector.background != background:
            raise ArtifactError(f"{bundle_dir}: calibration background={detector.background}, bundle files disagree")
        return detector

    def calibration_summary(self) -> dict[str, Any]:
        """What ``GET /models`` shows about this model's OOD gate."""
        summary: dict[str, Any] = {
            "calibrated": self.fitted,
            "scores": list(self.score_names),
            "default_score": self.default_score,
            "default_alpha": self.default_alpha,
            "background": self.background,
            "orientation": self.orientation,
        }
        if self.fitted:
            summary["method"] = CALIBRATION_METHOD
            if self.combined_parts:
                summary["combined_parts"] = list(self.combined_parts)
                summary["combined_rule"] = self.combine_rule
            summary["n_calibration"] = {name: int(len(v)) for name, v in self.calibration.items()}
            summary["dose_density"] = self.dose_density
            summary.update({k: v for k, v in self.info.items() if k in ("fitted", "n_holdout", "n_fit")})
        return summary
