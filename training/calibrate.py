"""``oodgate-calibrate BUNDLE_DIR``: fit the bundle's OOD detector on its held-out slice and store it in the bundle.

The held-out slice is the part of the training split the flow never saw (its
positions and sha256 are in the manifest, written at export). Its images go
through the same runtime the service uses, the :class:`service.ood.Detector`
is fitted on them, and ``calibration.npz`` plus ``manifest.calibration`` are
written into the bundle, with the manifest's sha256 entries kept in step. A new
model version therefore always brings its own calibration. The test split is
never touched here: it is only for measuring (``oodgate-eval``).

``--orientation`` adds the ``orientation`` score (``bpd - bpd(vertical flip)``) and
its feature in ``dose``; the manifest records it, so the service, like this
command, then runs every image twice through the flow (itself and its flip, in
one graph call). ``--latent-energy`` (the default for graphs that output it) adds
each level's latent energy to ``dose``'s statistics (:mod:`service.scores`); it costs
no flow pass. ``--combined-parts`` chooses what ``combined`` combines.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
from pathlib import Path

import numpy as np

from service.artifact import LATENT_ENERGY_OUTPUT, ArtifactError, Manifest, has_latent_energy
from service.calibration_file import calibration_summary, save_calibration
from service.conformal import DEFAULT_ALPHA
from service.densities import DOSE_DENSITIES
from service.ood import DEFAULT_FIT_FRACTION, CalibrationError, Detector
from service.scores import COMBINE_RULES, SCORE_NAMES
from training.data import DatasetError, load_npz, recorded_training_split, sha256_array
from training.scoring import BATCH_SIZE, Bundle, open_bundle, run_complexity, run_statistics


def load_holdout(manifest: Manifest) -> np.ndarray:
    """The held-out images the manifest records, checked against their recorded sha256."""
    data = manifest.data
    if data is None or "holdout" not in data.slices:
        raise DatasetError("the manifest records no held-out slice; pass --holdout IMAGES.npz")
    images = recorded_training_split(data, tuple(manifest.input.shape))  # in the order the slices count
    start, stop = data.slices["holdout"]
    holdout = images[start:stop]
    digest = sha256_array(holdout)
    if digest != data.holdout_sha256:
        raise DatasetError(
            f"held-out images from {data.path} [{start}:{stop}] have sha256 {digest[:12]}..., the manifest "
            f"recorded {data.holdout_sha256[:12]}...: this is not the data the model was trained against"
        )
    return holdout


def calibrate_bundle(
    bundle: Bundle,
    holdout: np.ndarray,
    *,
    density: str = "gmm",
    fit_fraction: float = DEFAULT_FIT_FRACTION,
    seed: int = 0,
    default_score: str | None = None,
    default_alpha: float = DEFAULT_ALPHA,
    combined: bool = True,
    combined_parts: tuple[str, ...] | list[str] | None = None,
    combine_rule: str | None = None,
    orientation: bool | None = None,
    latent_energy: bool | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> Detector:
    """Score ``holdout`` through the bundle's runtime, fit, and write the calibration into the bundle.

    ``orientation`` ``None`` keeps what the runtime does (as the bundle's calibration said);
    ``True``/``False`` switch the runtime's flipped pass on or off first.
    ``latent_energy`` ``None``: on when the graph outputs it.
    """
    manifest = bundle.manifest
    if latent_energy is None:
        latent_energy = has_latent_energy(manifest)
    elif latent_energy and not has_latent_energy(manifest):
        raise ArtifactError(f"{bundle.directory}: the graph does not output {LATENT_ENERGY_OUTPUT}; re-export it")
    if orientation is not None:
        bundle.runtime.orientation = bool(orientation)
    stats = run_statistics(bundle, holdout, batch_size=batch_size, desc="held-out slice", progress=progress)
    complexity = run_complexity(holdout, progress=progress)
    detector = Detector(
        manifest.input.dims,
        manifest.levels,
        background=bundle.runtime.background is not None,
        orientation=bundle.runtime.orientation,
        latent_energy=latent_energy,
        dose_density=density,
        default_alpha=default_alpha,
    )
    detector.fit(
        stats,
        complexity,
        fit_fraction=fit_fraction,
        seed=seed,
        combined=combined,
        combined_parts=combined_parts,
        combine_rule=combine_rule,
    )
    if default_score is not None:
        detector.default_score = default_score
    extra = {
        "holdout_sha256": sha256_array(holdout),
        "runtime": f"{bundle.runtime.backend} {importlib.metadata.version('onnxruntime')}",
    }
    bundle.manifest = save_calibration(detector, bundle.directory, manifest, extra=extra)
    return detector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oodgate-calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="models/<name>/<version>/")
    parser.add_argument("--holdout", help=".npz of held-out in-distribution images (default: the manifest's slice)")
    parser.add_argument("--density", choices=DOSE_DENSITIES, default="gmm", help="dose density (default: gmm)")
    parser.add_argument("--fit-fraction", type=float, default=DEFAULT_FIT_FRACTION, help="share fitted on (0.4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit/calibration cut")
    parser.add_argument("--default-score", choices=SCORE_NAMES, help="score that decides by default (see oodgate-eval)")
    parser.add_argument("--default-alpha", type=float, default=DEFAULT_ALPHA, help="alpha when a request gives none")
    parser.add_argument("--no-combined", action="store_true", help="leave out the combined score")
    parser.add_argument(
        "--combined-parts",
        type=lambda text: tuple(p for p in text.split(",") if p),
        help="comma-separated scores whose tail evidence combined joins (default: dose,complexity; "
        "dose,orientation with --orientation; likelihood_ratio in place of complexity with a background flow)",
    )
    parser.add_argument(
        "--combined-rule",
        choices=COMBINE_RULES,
        help="how combined joins its parts' tail evidence: the larger (max) or the sum (Fisher's method); "
        "default: sum with a background flow, else max",
    )
    parser.add_argument(
        "--orientation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also score each image flipped vertically: the orientation score and a dose feature; "
        "costs a second flow pass per image, here and in the service (default: as the bundle's calibration)",
    )
    parser.add_argument(
        "--latent-energy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add each flow level's latent energy (mean squared standardized latent) to dose's statistics; "
        "no extra flow pass (default: on when the graph outputs it)",
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        bundle = open_bundle(args.bundle, threads=args.threads, orientation=args.orientation)
        holdout = load_npz(args.holdout) if args.holdout else load_holdout(bundle.manifest)
        detector = calibrate_bundle(
            bundle,
            holdout,
            density=args.density,
            fit_fraction=args.fit_fraction,
            seed=args.seed,
            default_score=args.default_score,
            default_alpha=args.default_alpha,
            combined=not args.no_combined,
            combined_parts=args.combined_parts,
            combine_rule=args.combined_rule,
            orientation=args.orientation,
            latent_energy=args.latent_energy,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except (ArtifactError, DatasetError, CalibrationError, ValueError) as exc:
        print(f"oodgate-calibrate: {exc}", file=sys.stderr)
        return 2
    info = calibration_summary(detector)
    print(
        f"calibrated {Path(args.bundle)} on {info['n_holdout']} held-out images "
        f"({info['n_fit']} fit, calibration sets {info['n_calibration']}); scores {info['scores']}, "
        f"default {info['default_score']} at alpha {info['default_alpha']}; orientation {info['orientation']}, "
        f"latent energy {info['latent_energy']}"
        + (f", combined of {info['combined_parts']} by {info['combined_rule']}" if info.get("combined_parts") else "")
        + f"; {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
