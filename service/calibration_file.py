"""The calibration contract: how a fitted :class:`~service.ood.Detector` is stored in a bundle and read back.

The fitted state is plain float64 arrays in ``calibration.npz`` next to the
manifest (listed in its ``files``, so its sha256 is checked on load) plus a small
JSON summary in ``manifest.calibration``: nothing is ever pickled. Arrays are
keyed ``cal__<score>`` (sorted calibration scores), ``dose__<name>`` (the DoSE
density), ``typicality__mean_bpd`` and ``ref__<part>`` (``combined``'s
references). The summary says ``orientation`` and, with the combined score,
``combined.parts`` and ``combined.rule`` (format 2). Format 1, which had
neither, is refused: no bundle carries one any more, so re-calibrate with
``oodgate-calibrate``.

Training writes calibrations (:func:`save_calibration`); the service only
reads them (:func:`load_detector`) and shows their public part on ``GET /models``
(:func:`calibration_summary`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from service.artifact import (
    CALIBRATION_FILE,
    CALIBRATION_KEY,
    LATENT_ENERGY_OUTPUT,
    ArtifactError,
    Manifest,
    file_entry,
    has_background,
    has_latent_energy,
    write_manifest,
)
from service.conformal import CONFORMAL_METHOD, DEFAULT_ALPHA
from service.densities import density_from_arrays
from service.ood import CalibrationError, Detector
from service.scores import COMBINE_RULES, dose_feature_names

CALIBRATION_FORMAT = 2
READABLE_FORMATS = (CALIBRATION_FORMAT,)
SCORES_PREFIX = "cal__"
DOSE_PREFIX = "dose__"
REFERENCE_PREFIX = "ref__"
MEAN_BPD_KEY = "typicality__mean_bpd"
# the fit's record that survives a reload (the rest of the summary is rebuilt from the arrays)
KEPT_INFO = ("fitted", "n_holdout", "n_fit", "seed", "fit_fraction", "holdout_sha256", "runtime")


def calibration_state(detector: Detector) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON summary for ``manifest.calibration``, float64 arrays for ``calibration.npz``)."""
    if not detector.fitted:
        raise CalibrationError("nothing to save: the detector is not fitted")
    arrays = {f"{SCORES_PREFIX}{name}": values for name, values in detector.calibration.items()}
    arrays.update({f"{DOSE_PREFIX}{key}": value for key, value in detector.density.arrays().items()})
    arrays[MEAN_BPD_KEY] = np.array(detector.mean_bpd)
    arrays.update({f"{REFERENCE_PREFIX}{name}": values for name, values in detector.reference.items()})
    summary = {
        "method": CONFORMAL_METHOD,
        "format": CALIBRATION_FORMAT,
        "file": CALIBRATION_KEY,
        "scores": list(detector.score_names),
        "default_score": detector.default_score,
        "default_alpha": detector.default_alpha,
        **DetectorInputs.of(detector)._asdict(),
        "n_calibration": {name: int(len(values)) for name, values in detector.calibration.items()},
        "typicality": {"mean_bpd": detector.mean_bpd},
        "dose": {
            "density": detector.dose_density,
            "features": dose_feature_names(detector.levels, detector.orientation, detector.latent_energy),
        },
        **(
            {"combined": {"parts": list(detector.combined_parts), "rule": detector.combine_rule}}
            if detector.combined_parts
            else {}
        ),
        **detector.info,
    }
    return summary, {key: np.asarray(value, dtype=np.float64) for key, value in arrays.items()}


def calibration_summary(detector: Detector) -> dict[str, Any]:
    """What ``GET /models`` shows about a model's OOD gate: the manifest summary's public part."""
    summary: dict[str, Any] = {
        "calibrated": detector.fitted,
        "scores": list(detector.score_names),
        "default_score": detector.default_score,
        "default_alpha": detector.default_alpha,
        **DetectorInputs.of(detector)._asdict(),
    }
    if detector.fitted:
        summary["method"] = CONFORMAL_METHOD
        if detector.combined_parts:
            summary["combined_parts"] = list(detector.combined_parts)
            summary["combined_rule"] = detector.combine_rule
        summary["n_calibration"] = {name: int(len(v)) for name, v in detector.calibration.items()}
        summary["dose_density"] = detector.dose_density
        summary.update({k: v for k, v in detector.info.items() if k in ("fitted", "n_holdout", "n_fit")})
    return summary


def _prefixed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {key[len(prefix) :]: np.asarray(value) for key, value in arrays.items() if key.startswith(prefix)}


class DetectorInputs(NamedTuple):
    """What a calibrated detector reads besides the flow's own pass, as its summary records it.

    The runtime needs this before any detector exists (whether to run the
    flipped pass), the model entry to refuse a graph that lacks an output the
    calibration wants, and the detector when it is rebuilt: all three ask
    :func:`detector_inputs`, the one reader of these keys.
    """

    background: bool  # likelihood_ratio: a pass through the background flow
    orientation: bool  # the vertically flipped pass
    latent_energy: bool  # dose reads the graph's latent-energy output (no extra pass)

    @classmethod
    def of(cls, detector: Detector) -> DetectorInputs:
        return cls(detector.background, detector.orientation, detector.latent_energy)


def detector_inputs(summary: Mapping[str, Any] | None) -> DetectorInputs:
    """The switches a calibration summary records; a key a calibration predates reads as off."""
    return DetectorInputs(**{name: bool((summary or {}).get(name, False)) for name in DetectorInputs._fields})


def detector_from_state(
    dims: int, levels: int, summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> Detector:
    """The detector a :func:`calibration_state` describes; an ``ArtifactError`` when the two disagree."""
    if summary.get("method") != CONFORMAL_METHOD or summary.get("format") not in READABLE_FORMATS:
        raise ArtifactError(
            f"calibration is {summary.get('method')!r} format {summary.get('format')!r}; this oodgate reads "
            f"{CONFORMAL_METHOD!r} formats {list(READABLE_FORMATS)}: re-calibrate it with oodgate-calibrate"
        )
    detector = Detector(
        dims,
        levels,
        **detector_inputs(summary)._asdict(),
        dose_density=summary["dose"]["density"],
        default_score=summary.get("default_score"),
        default_alpha=summary.get("default_alpha", DEFAULT_ALPHA),
    )
    detector.mean_bpd = float(arrays[MEAN_BPD_KEY])
    detector.density = density_from_arrays(detector.dose_density, _prefixed(arrays, DOSE_PREFIX))
    detector.calibration = _prefixed(arrays, SCORES_PREFIX)
    detector.reference = _prefixed(arrays, REFERENCE_PREFIX)
    if "combined" in detector.calibration:
        combined = summary.get("combined", {})
        if "parts" not in combined:
            raise ArtifactError("calibration has the combined score but its summary names no combined.parts")
        detector.combined_parts = tuple(combined["parts"])
        detector.combine_rule = combined.get("rule", "max")
        if detector.combine_rule not in COMBINE_RULES:
            raise ArtifactError(f"combined rule {detector.combine_rule!r} is not one of {COMBINE_RULES}")
        if set(detector.reference) != set(detector.combined_parts):
            raise ArtifactError("calibration has the combined score but not its references")
    expected = len(dose_feature_names(levels, detector.orientation, detector.latent_energy))
    if detector.density.dims != expected:
        raise ArtifactError(f"the dose density has {detector.density.dims} features, this calibration {expected}")
    missing = {name for name in summary.get("scores", []) if name not in detector.calibration}
    if missing:
        raise ArtifactError(f"calibration file lacks calibration scores for {sorted(missing)}")
    detector.info = {k: summary[k] for k in summary if k in KEPT_INFO or k.startswith("holdout_")}
    return detector


def save_calibration(
    detector: Detector, bundle_dir: str | Path, manifest: Manifest, extra: Mapping[str, Any] | None = None
) -> Manifest:
    """Write ``calibration.npz`` into the bundle and the summary into its manifest (sha256 kept in step)."""
    bundle_dir = Path(bundle_dir)
    summary, arrays = calibration_state(detector)
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


def load_detector(manifest: Manifest, bundle_dir: str | Path) -> Detector:
    """The bundle's detector: calibrated when the manifest says so, else raw scores and no flags."""
    bundle_dir = Path(bundle_dir)
    background = has_background(manifest)
    dims, levels = manifest.input.dims, manifest.levels
    if not manifest.calibration:
        return Detector(dims, levels, background=background)
    key = manifest.calibration.get("file", CALIBRATION_KEY)
    if key not in manifest.files:
        raise ArtifactError(f"{bundle_dir}: manifest.calibration names file {key!r}, which 'files' does not list")
    path = bundle_dir / manifest.files[key].path
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read calibration {path}: {exc}") from exc
    detector = detector_from_state(dims, levels, manifest.calibration, arrays)
    if detector.background != background:
        raise ArtifactError(f"{bundle_dir}: calibration background={detector.background}, bundle files disagree")
    if detector.latent_energy and not has_latent_energy(manifest):
        raise ArtifactError(
            f"{bundle_dir}: the calibration's dose reads {LATENT_ENERGY_OUTPUT}, which this graph does not output "
            "(re-export the bundle, or re-calibrate with --no-latent-energy)"
        )
    return detector
