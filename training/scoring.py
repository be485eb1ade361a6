"""Run a bundle's exported graph over many images, exactly as the service does.

Calibration and evaluation must see the numbers the service will compute, so
they go through :func:`service.runtimes.build_runtime` (ONNX Runtime on the
exported graph, plus the background graph when the bundle has one, plus the
flipped-image pass when its calibration uses ``orientation``), never through
the eager training model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.artifact import ArtifactError, Manifest, load_manifest
from service.calibration_file import load_detector
from service.complexity import complexity_bits
from service.ood import Detector
from service.runtimes import FlowRuntime, build_runtime

BATCH_SIZE = 256  # images per runtime call: scores are per image, so this only bounds one call's memory
COMPLEXITY_CHUNK = 1024  # images per L(x) call, for the progress bar's steps


@dataclass
class Bundle:
    directory: Path
    manifest: Manifest
    runtime: FlowRuntime


def open_bundle(
    bundle_dir: str | Path, backend: str = "onnx", threads: int = 0, orientation: bool | None = None
) -> Bundle:
    """Verify the bundle's files (sha256) and build the service's runtime for it, on the CPU.

    ``orientation`` ``None``: the flipped pass exactly when the bundle's calibration uses it,
    as the service does.
    """
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir, verify=True)
    return Bundle(bundle_dir, manifest, build_runtime(manifest, bundle_dir, backend, "cpu", threads, orientation))


def open_calibrated_bundle(bundle_dir: str | Path, threads: int = 0) -> tuple[Bundle, Detector]:
    """The bundle's runtime and its calibrated detector; an uncalibrated bundle is an ArtifactError."""
    bundle = open_bundle(bundle_dir, threads=threads)
    detector = load_detector(bundle.manifest, bundle.directory)
    if not detector.fitted:
        raise ArtifactError(f"{bundle_dir} carries no calibration: run oodgate-calibrate {bundle_dir} first")
    return bundle, detector


def check_images(images: np.ndarray, manifest: Manifest, source: str) -> np.ndarray:
    expected = tuple(manifest.input.shape)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"{source}: images are {images.dtype} {images.shape}, the model takes uint8 [N, *{expected}]")
    return np.ascontiguousarray(images)


def run_statistics(
    bundle: Bundle, images: np.ndarray, batch_size: int = BATCH_SIZE, desc: str = "scoring", progress: bool = True
) -> dict[str, np.ndarray]:
    """The runtime's named outputs (graph outputs, ``background_bpd``, ``vflip_bpd``) for every image."""
    images = check_images(images, bundle.manifest, desc)
    parts: dict[str, list[np.ndarray]] = {}
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, file=sys.stderr, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            out = bundle.runtime.run(images[start : start + batch_size])
            for name, value in out.items():
                parts.setdefault(name, []).append(np.asarray(value))
            bar.update(min(batch_size, len(images) - start))
    return {name: np.concatenate(values) for name, values in parts.items()}


def run_complexity(
    images: np.ndarray, desc: str = "complexity", progress: bool = True, chunk: int = COMPLEXITY_CHUNK
) -> np.ndarray:
    out = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, file=sys.stderr, leave=False) as bar:
        for start in range(0, len(images), chunk):
            out.append(complexity_bits(images[start : start + chunk]))
            bar.update(len(out[-1]))
    return np.concatenate(out) if out else np.zeros(0)
