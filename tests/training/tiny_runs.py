"""Tiny training runs for the training tests: a config that trains in seconds and 8x8 image slices."""

from __future__ import annotations

import numpy as np

from training.config import RunConfig
from training.data import Slices


def tiny_config(tmp_path, **train) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "tiny",
            "model": {"levels": 2, "steps": 1, "hidden": 8},
            "train": {
                "batch_size": 16,
                "lr": 5e-3,
                "warmup_steps": 5,
                "epochs": 2,
                "val_every": 4,
                "checkpoint_every": 2,
                "threads": 1,
                **train,
            },
            "out_dir": str(tmp_path / "run"),
        }
    )


def blob_images(centres: np.ndarray, spread: float) -> np.ndarray:
    """8x8 gray Gaussian blobs at ``centres`` ((row, column) per image), peak 200."""
    yy, xx = np.mgrid[:8, :8]
    images = 200 * np.exp(-((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2) / spread)
    return images.astype(np.uint8)[:, None]


def sliced(images: np.ndarray) -> Slices:
    """96 images as 64 train, 16 validation and 16 held out, in order."""
    return Slices(
        train=images[:64],
        validation=images[64:80],
        holdout=images[80:],
        ranges={"train": (0, 64), "validation": (64, 80), "holdout": (80, 96)},
    )


def blob_slices(n=96, seed=0) -> Slices:
    """Smooth blobs: far from uniform noise, so a flow that learns drops well below 8 bpd."""
    rng = np.random.default_rng(seed)
    return sliced(blob_images(rng.uniform(2, 6, size=(n, 2)), 6))


def top_heavy_slices(n=96, seed=0) -> Slices:
    """Blobs in the upper half only: upright and upside-down images differ, as clothes do."""
    rng = np.random.default_rng(seed)
    return sliced(blob_images(np.stack([rng.uniform(1.5, 3.5, n), rng.uniform(2, 6, n)], axis=1), 4))
