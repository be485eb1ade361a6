"""What faint background noise must cost a density model of FashionMNIST, against what the flow pays.

The should-pass set ``bgnoise`` (:func:`training.ood_sets.background_noise`) adds
N(0, sigma gray levels) to the pixels below the threshold, rounded and clipped to 8
bits. On an exactly-zero pixel that noise has an entropy a lossless model must spend;
times the share of zero pixels it is a lower bound, in bits/dim, on how much more the
noisy images cost. Printed beside the held-out bpd spread (the manifest) and the
flow's measured shift (the report's per-image scores).

    .venv/bin/python -m scripts.bgnoise_bound [models/fashion-glow/1] [docs/ood-report]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import inspect
from pathlib import Path

import numpy as np

from service.artifact import load_manifest
from training.data import FASHION_MNIST_DIR, load_images
from training.metrics import auroc
from training.ood_sets import background_noise


def noise_entropy_on_zero(sigma: float, draws: int = 1_000_000, seed: int = 0) -> float:
    """Entropy in bits of ``clip(rint(N(0, sigma)), 0, 255)``: the noise as the set writes it on a 0 pixel."""
    values = np.clip(np.rint(np.random.default_rng(seed).normal(0.0, sigma, draws)), 0, 255).astype(int)
    p = np.bincount(values) / draws
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def report_bpd(report: Path, name: str) -> np.ndarray:
    with gzip.open(report / "scores.csv.gz", "rt") as handle:
        return np.array([float(row["bpd"]) for row in csv.DictReader(handle) if row["set"] == name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, default=Path("models/fashion-glow/1"))
    parser.add_argument("report", nargs="?", type=Path, default=Path("docs/ood-report"))
    args = parser.parse_args()
    sigma = inspect.signature(background_noise).parameters["sigma"].default
    test = load_images("fashion-mnist", str(FASHION_MNIST_DIR), 1, None, split="test")
    zero_share = float((test == 0).mean())
    entropy = noise_entropy_on_zero(sigma)
    spread = load_manifest(args.bundle).calibration["holdout_bpd_std"]
    clean, noisy = report_bpd(args.report, "in-distribution"), report_bpd(args.report, "bgnoise")
    print(f"zero pixels in the test split: {zero_share:.4f}")
    print(f"entropy of N(0, {sigma:g}) rounded and clipped on a 0 pixel: {entropy:.2f} bits")
    print(f"lower bound on the extra cost: {zero_share * entropy:.2f} bits/dim")
    print(f"held-out bpd standard deviation: {spread:.2f}")
    print(f"median bpd, clean test / bgnoise: {np.median(clean):.2f} / {np.median(noisy):.2f}")
    print(f"AUROC of bpd alone, bgnoise against the test split: {auroc(clean, noisy):.3f}")


if __name__ == "__main__":
    main()
