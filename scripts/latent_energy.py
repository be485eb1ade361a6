"""Each flow level's latent energy on a bundle's test images and on its latent-zeroed images.

The figures behind the model cards' "Latent energy" sections: the mean of the
graph's ``latent_energy_levels`` per level (1 for a typical draw from the prior)
on the in-distribution test images and on Algorithm 1's latent-zeroed copies of
them, and the AUROC of each level's two-sided distance from the test mean. It
runs the bundle's own runtime (so the graph's output, not the eager flow's) and
builds the latent-zeroed set with the evaluation's own builder.

    .venv/bin/python -m scripts.latent_energy models/fashion-glow/1 [--in-dist PATH] [--per-set 1000]
"""

from __future__ import annotations

import argparse

import numpy as np

from service.artifact import LATENT_ENERGY_OUTPUT
from training.evaluate import in_distribution_images
from training.metrics import auroc
from training.ood_sets import Context, build_set
from training.scoring import open_bundle, run_statistics
from training.weights import flow_from_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.latent_energy", description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--in-dist", help="test images (default: as oodgate-eval picks them)")
    parser.add_argument("--per-set", type=int, default=1000)
    args = parser.parse_args(argv)
    bundle = open_bundle(args.bundle, threads=1)
    test, _ = in_distribution_images(bundle, args.in_dist)  # the report's own in-distribution set
    shape = tuple(bundle.manifest.input.shape)
    ctx = Context(shape=shape, in_images=test, per_set=args.per_set, flow=flow_from_bundle(args.bundle))
    zeroed = build_set("latent_zeroed", ctx).images
    energy = {
        name: np.asarray(run_statistics(bundle, images, desc=name, progress=False)[LATENT_ENERGY_OUTPUT], np.float64)
        for name, images in (("test", test), ("latent_zeroed", zeroed))
    }
    mean = energy["test"].mean(axis=0)
    print(f"{args.bundle}: mean latent energy per level (level 1 = finest)")
    for name, values in energy.items():
        print(f"  {name:14s} n={len(values):5d}  " + "  ".join(f"{v:.3f}" for v in values.mean(axis=0)))
    distances = [
        auroc(np.abs(energy["test"][:, i] - m), np.abs(energy["latent_zeroed"][:, i] - m)) for i, m in enumerate(mean)
    ]
    print("  AUROC of |energy - test mean|, per level: " + "  ".join(f"{a:.3f}" for a in distances))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
