"""Which upside-down FashionMNIST images the default score lets through, by class.

Reads the per-image scores of an ``oodgate-eval`` report and rebuilds the
report's ``vflip`` set (the same seeded subset of the test split) to recover
each image's label and how vertically asymmetric the upright image is
(mean absolute pixel difference to its flip, 0-255). Misses concentrate where
an upside-down item is itself a plausible item (bags, trousers, dresses).

    .venv/bin/python -m scripts.vflip_misses [docs/ood-report] [--alpha 0.05]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
from pathlib import Path

import numpy as np

from service.runtimes import vflip
from training import ood_sets
from training.data import load_fashion_mnist, to_nchw

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", nargs="?", default="docs/ood-report")
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args(argv)
    images, labels = load_fashion_mnist("test")
    images = to_nchw(images)
    ctx = ood_sets.Context(shape=images.shape[1:], in_images=images)
    index = np.sort(ctx.rng("vflip").choice(len(images), size=min(ctx.per_set, len(images)), replace=False))
    upright = images[index]
    if not np.array_equal(ood_sets.vflip(ctx), vflip(upright)):
        raise SystemExit("the vflip set is not built the way this script assumes")
    with gzip.open(Path(args.report) / "scores.csv.gz", "rt", newline="") as stream:
        rows = sorted((r for r in csv.DictReader(stream) if r["set"] == "vflip"), key=lambda r: int(r["index"]))
    names = [c[2:] for c in rows[0] if c.startswith("p_")]
    flipped = {f"p_{n}": np.array([float(r[f"p_{n}"]) for r in rows]) for n in names}
    asymmetry = np.abs(upright.astype(float) - vflip(upright)).mean(axis=(1, 2, 3))
    print(f"{len(rows)} flipped test images; not flagged at alpha {args.alpha}, per score:")
    for name in names:
        missed = flipped[f"p_{name}"] > args.alpha
        print(f"  {name:12s} {missed.sum():5d} ({100 * missed.mean():.1f}%)")
    missed = flipped["p_combined"] > args.alpha
    print("\nnot flagged by `combined`, by class (missed / images of that class in the set):")
    for c, name in enumerate(CLASSES):
        of_class = labels[index] == c
        print(f"  {name:10s} {int((missed & of_class).sum()):3d} / {int(of_class.sum())}")
    print(
        f"\nasymmetry of the upright image: median {np.median(asymmetry[missed]):.1f} for the missed ones, "
        f"{np.median(asymmetry):.1f} for all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
