"""Tiny bundles of any shape whose manifest records their data (an .npz split and test set), calibrated."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from service.artifact import TrainingData, load_manifest, write_manifest
from training.calibrate import calibrate_bundle
from training.data import sha256_array
from training.scoring import open_bundle

SLICES = {"train": (0, 180), "validation": (180, 200), "holdout": (200, 400)}


def blobs(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Smooth 2x2 blocks upsampled to ``shape``: a stand-in domain that compresses unlike noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 216, size=(n, shape[0], shape[1] // 4, shape[2] // 4))
    return np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3).astype(np.uint8)


def recorded_bundle(root: Path, models_root: Path, name: str, shape: tuple[int, int, int]) -> Path:
    """A copy of ``models_root/name/1`` recording ``root/train.npz`` (400 images) and ``root/test.npz`` (120)."""
    bundle = root / name / "1"
    shutil.copytree(models_root / name / "1", bundle)
    train, test = blobs(400, shape, seed=0), blobs(120, shape, seed=1)
    np.savez(root / "train.npz", images=train)
    np.savez(root / "test.npz", images=test)
    manifest = load_manifest(bundle)
    holdout = train[slice(*SLICES["holdout"])]
    manifest.data = TrainingData(
        source="npz",
        split="train",
        path=str(root / "train.npz"),
        sha256=sha256_array(train),
        slices=SLICES,
        holdout_sha256=sha256_array(holdout),
        test_source="npz",
        test_path=str(root / "test.npz"),
        test_sha256=sha256_array(test),
    )
    write_manifest(bundle, manifest)
    calibrate_bundle(open_bundle(bundle, threads=1), holdout, density="gaussian", progress=False)
    return bundle
