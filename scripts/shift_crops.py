"""Which shifted images the gate flags: those the shift cropped, or those it only moved?

The should-pass sets ``shift1``/``shift2`` (:func:`training.ood_sets.shift`) move
each test image left and drop the columns that leave the frame. A FashionMNIST
item often fills the frame's width, so the shift can cut part of it away: the
result is then a different image (a cropped sleeve, a cut-off bag handle), not
the same one moved. This rebuilds each set's source images exactly as the
evaluation drew them, splits them by whether any non-zero pixel left the frame,
and reads the report's own per-image p-values (``scores.csv.gz``) to give the
flag rate of each part. It also prints where the images' horizontal centre of mass
sits: FashionMNIST centres its items, so the training data holds few images as far
off-centre as a shifted one.

    .venv/bin/python -m scripts.shift_crops [models/fashion-glow/1] [docs/ood-report]
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

import numpy as np

from service.decision import flags
from training.data import FASHION_MNIST_DIR, load_images
from training.evaluate import in_distribution_images
from training.ood_sets import PER_SET, Context
from training.scoring import open_calibrated_bundle
from training.targets import REPORT_ALPHA


def flagged_by_index(report: Path, name: str, score: str) -> dict[int, bool]:
    with gzip.open(report / "scores.csv.gz", "rt", newline="") as rows:
        listed = [(int(row["index"]), float(row[f"p_{score}"])) for row in csv.DictReader(rows) if row["set"] == name]
    flagged = flags(np.array([p for _, p in listed]), REPORT_ALPHA)
    return {index: bool(flag) for (index, _), flag in zip(listed, flagged, strict=True)}


def centre_x(images: np.ndarray) -> np.ndarray:
    """Each image's horizontal centre of mass, in pixels from the left edge."""
    mass = images.astype(np.float64).sum(axis=(1, 2))  # [N, W]
    return (mass * np.arange(mass.shape[1])).sum(axis=1) / np.maximum(mass.sum(axis=1), 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.shift_crops", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default="models/fashion-glow/1")
    parser.add_argument("report", nargs="?", default="docs/ood-report")
    parser.add_argument("--score", default=None, help="score whose flags to read (default: the bundle's default)")
    parser.add_argument("--per-set", type=int, default=PER_SET, help="as the report was run (its default)")
    args = parser.parse_args(argv)
    bundle, detector = open_calibrated_bundle(args.bundle, threads=1)
    score = args.score or detector.default_score
    shape = tuple(bundle.manifest.input.shape)
    test, _ = in_distribution_images(bundle, None)  # what the report shifted
    ctx = Context(shape=shape, in_images=test, per_set=args.per_set)
    print(f"{args.bundle}, score {score}, flagged at alpha {REPORT_ALPHA} (p-values from {args.report}/scores.csv.gz)")
    train = load_images("fashion-mnist", FASHION_MNIST_DIR, shape[0], shape[1:], split="train")
    centre = centre_x(train)
    middle, spread = float(np.median(centre)), float(np.std(centre))
    print(f"  training images' horizontal centre of mass: median {middle:.2f} px, standard deviation {spread:.2f} px")
    for pixels in (1, 2):
        name = f"shift{pixels}"
        source = ctx.sample_in(name)  # the images the set shifted, in the set's order
        cropped = np.any(source[..., :pixels] > 0, axis=(1, 2, 3))
        flags = flagged_by_index(Path(args.report), name, score)
        if len(flags) != len(source):
            raise SystemExit(f"{name}: the report has {len(flags)} rows, the rebuilt set {len(source)}")
        flagged = np.array([flags[i] for i in range(len(source))])
        moved = centre_x(source) - pixels
        beyond = float(np.mean(np.abs(centre - middle) >= np.median(np.abs(moved - middle))))
        print(
            f"  {name}: the shifted images' centre is {np.median(np.abs(moved - middle)):.2f} px from the training "
            f"median (median over the set); {beyond:.1%} of training images are as far or farther"
        )
        print(
            f"  {name}: {flagged.mean():.1%} of {len(source)} flagged; "
            f"cropped by the shift: {cropped.mean():.1%} of the images, {flagged[cropped].mean():.1%} of them flagged; "
            f"only moved: {flagged[~cropped].mean():.1%} flagged"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
