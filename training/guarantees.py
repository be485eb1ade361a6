"""``python -m training.guarantees BUNDLE``: measure the service's three guarantees on a bundle.

Every image goes through the bundle's runtime and :class:`service.ood.Detector`
(the service's scoring code), every p-value through :func:`service.conformal.conformal_p_values`
against the bundle's own ``calibration.npz``, and every decision through
:mod:`service.guarantees` and :mod:`service.drift_martingale`: what is measured
here is what the service does.

- **FDR**: random batches of in-distribution test images with 0-20% OOD images
  mixed in; per batch the false-discovery proportion and the power of the
  Benjamini-Hochberg discoveries at q, beside the per-image flags at alpha = q.
- **Calibration-conditional**: random splits of the pool "calibration scores +
  test scores" (all in-distribution, none fitted on) into a calibration set of
  the bundle's size and a test set; per split the realized false-positive rate of
  the plain and of the conditional flag; the share of splits above alpha.
- **Drift**: shuffled in-distribution test streams (false alarms), and streams
  that turn into a mixture with OOD images after a prefix (detection delay).

The held-out slice is re-scored first and must reproduce the bundle's
calibration scores (a parity check), so the pool is the data the calibration
came from. Scores are cached per bundle and image set (``--cache``); the first run
scores every image once, later runs only redo the statistics.

This module scores and runs the command; the experiments are
:mod:`training.guarantee_experiments` and the page :mod:`training.guarantees_report`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from service.drift_martingale import DEFAULT_DRIFT_DELTA
from service.guarantees import DEFAULT_CONDITIONAL_DELTA
from service.ood import Detector
from training.calibrate import load_holdout
from training.data import load_npz
from training.evaluate import in_distribution_images, parse_extra
from training.guarantee_experiments import conditional_experiment, drift_experiment, fdr_experiment, redrawn_fdr
from training.guarantees_report import render
from training.ood_sets import BUILTIN_SETS, Context, ImageSet, build_set, fit_to_shape, load_set
from training.scoring import Bundle, open_calibrated_bundle, run_complexity, run_statistics

PARITY_TOLERANCE = 1e-4  # re-scored held-out scores vs calibration.npz: float32 graph, same images


# --------------------------------------------------------------------------- scoring (once, cached)


def score_images(bundle: Bundle, detector: Detector, images: np.ndarray, name: str, cache: Path | None) -> np.ndarray:
    """The default score of every image, through the bundle's runtime and the service's Detector; cached."""
    score = detector.default_score
    key = hashlib.sha256()
    key.update(bundle.manifest.files["onnx"].sha256.encode() if "onnx" in bundle.manifest.files else b"")
    key.update(np.asarray(detector.calibration[score]).tobytes())
    key.update(np.ascontiguousarray(images).tobytes())
    path = None if cache is None else cache / f"{bundle.manifest.name}-{bundle.manifest.version}-{name}-{score}.npz"
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["key"]) == key.hexdigest():
                return archive["scores"]
    started = time.monotonic()
    stats = run_statistics(bundle, images, desc=name, progress=False)
    complexity = run_complexity(images, progress=False) if detector.needs_complexity else None
    scores = detector.score(stats, complexity, [score])[score]
    print(f"  scored {name}: {len(images)} images in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, scores=scores, key=np.array(key.hexdigest()))
    return scores


def calibration_parity(detector: Detector, holdout_scores: np.ndarray) -> float:
    """Max |difference| between the re-scored held-out calibration part and ``calibration.npz``."""
    score = detector.default_score
    calibration = np.asarray(detector.calibration[score])
    n = len(holdout_scores)
    if len(calibration) == n:  # a score without a fit calibrates on the whole slice
        part = holdout_scores
    else:  # Detector.fit's own seeded cut: the calibration part is what the fit part left
        part = holdout_scores[detector.calibration_part(n)]
    if len(part) != len(calibration):
        return float("inf")
    return float(np.max(np.abs(np.sort(part) - calibration)))


# --------------------------------------------------------------------------- command


def ood_set(value: str, shape: tuple[int, int, int], in_images: np.ndarray, seed: int) -> ImageSet:
    """``--ood-set``: a built-in set's name, or ``NAME=PATH`` read as oodgate-eval's ``--add`` reads it."""
    if "=" not in value:
        if value not in BUILTIN_SETS:
            raise SystemExit(f"--ood-set {value!r}: not a built-in set ({', '.join(BUILTIN_SETS)}) nor NAME=PATH")
        return build_set(value, Context(shape, in_images, seed=seed))
    ((name, path),) = parse_extra([value]).items()
    return load_set(name, path, "ood", shape)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.guarantees", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="a calibrated models/<name>/<version>/")
    parser.add_argument("--out", default="docs/ood-report", help="folder for guarantees.md and guarantees.json")
    parser.add_argument("--in-dist", help="in-distribution test images (.npz or folder; default: FashionMNIST test)")
    parser.add_argument("--holdout", help="held-out images (.npz; default: the manifest's slice)")
    parser.add_argument(
        "--ood-set",
        default="mnist",
        help="OOD set mixed in: a built-in name (oodgate-eval's) or NAME=PATH (an .npz or folder of images)",
    )
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "oodgate"), help="score cache folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fdr-batches", type=int, default=200)
    parser.add_argument("--fdr-batch-size", type=int, default=200)
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--delta", type=float, default=DEFAULT_CONDITIONAL_DELTA, help="conditional delta")
    parser.add_argument("--drift-streams", type=int, default=50)
    parser.add_argument("--drift-length", type=int, default=10000)
    parser.add_argument("--drift-prefix", type=int, default=2000, help="in-distribution images before the change")
    parser.add_argument("--drift-delta", type=float, default=DEFAULT_DRIFT_DELTA)
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m training.guarantees " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    bundle, detector = open_calibrated_bundle(args.bundle, threads=args.threads)
    shape = tuple(bundle.manifest.input.shape)
    in_images, in_description = in_distribution_images(bundle, args.in_dist)
    holdout = fit_to_shape(load_npz(args.holdout), shape) if args.holdout else load_holdout(bundle.manifest)
    ood = ood_set(args.ood_set, shape, in_images, args.seed)
    drift_length = min(args.drift_length, len(in_images))
    if not 0 < args.drift_prefix < drift_length:
        raise SystemExit(
            f"--drift-prefix {args.drift_prefix} must lie inside the drift streams ({drift_length} images: "
            f"--drift-length, at most the {len(in_images)} in-distribution test images)"
        )
    cache = Path(args.cache) if args.cache else None
    scoring = time.monotonic()
    holdout_scores = score_images(bundle, detector, holdout, "holdout", cache)
    in_scores = score_images(bundle, detector, in_images, "in-distribution", cache)
    ood_scores = score_images(bundle, detector, ood.images, ood.name, cache)
    scoring = time.monotonic() - scoring
    parity = calibration_parity(detector, holdout_scores)
    if parity > PARITY_TOLERANCE:
        raise SystemExit(f"the re-scored held-out slice does not reproduce calibration.npz (max diff {parity:.3g})")
    calibration = np.sort(np.asarray(detector.calibration[detector.default_score], dtype=np.float64))
    rng = np.random.default_rng(args.seed)
    fdr = fdr_experiment(calibration, in_scores, ood_scores, args.fdr_batches, args.fdr_batch_size, rng)
    redrawn = redrawn_fdr(  # its own stream of random numbers: the other experiments' draws stay as they were
        calibration, in_scores, ood_scores, args.fdr_batches, args.fdr_batch_size, np.random.default_rng([args.seed, 1])
    )
    for row in fdr:
        row.redrawn_mean_fdp = redrawn[row.q]
    conditional = conditional_experiment(calibration, in_scores, ood_scores, args.splits, args.delta, rng)
    drift = drift_experiment(
        calibration,
        in_scores,
        ood_scores,
        args.drift_streams,
        drift_length,
        args.drift_prefix,
        args.drift_delta,
        rng,
    )
    summary = {
        "bundle": str(args.bundle).rstrip("/"),
        "command": command,
        "score": detector.default_score,
        "n_calibration": len(calibration),
        "in_description": in_description,
        "n_in": len(in_scores),
        "ood_description": f"`{ood.name}`: {ood.description}",
        "n_ood": len(ood_scores),
        "parity": parity,
        "seed": args.seed,
        "fdr_batches": args.fdr_batches,
        "fdr_batch_size": args.fdr_batch_size,
        "conditional_splits": args.splits,
        "drift_delta": args.drift_delta,
        "drift_length": drift_length,
        "drift_length_asked": args.drift_length,
        "drift_prefix": args.drift_prefix,
        "fdr": [asdict(r) for r in fdr],
        "conditional": [asdict(r) for r in conditional],
        "drift": [asdict(r) for r in drift],
        "scoring_seconds": scoring,
        "seconds": time.monotonic() - started,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guarantees.md").write_text(render(summary))
    (out / "guarantees.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"wrote {out / 'guarantees.md'} ({summary['seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
