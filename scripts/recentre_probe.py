"""A probe, not a score: would moving each image back to where the training data keeps its items pass the shifts?

The should-pass sets ``shift1``/``shift2`` move test images left, and the flow flags the
moved ones (``scripts/shift_crops.py``). Training with shifts passes them but costs the
MNIST target (the fashion card's "Shift augmentation"). This tries the test-time side of
the same invariance, canonicalisation: each image's centre of mass (of its difference
from its own border's median, so no background colour is assumed) is moved, by a whole
number of pixels, at most ``--limit`` per axis, to the training slice's median centre,
the vacated rows and columns repeating the edge (:func:`training.augment.shift_images`).

Two ways to use the moved copy, each re-calibrated on the bundle's own calibration part
of the held-out slice (the images its p-values were calibrated on), so each column's
flag rates are conformal ones:

- ``min``: the lower of the image's score and its moved copy's, a score that passes an image
  if either position looks typical;
- ``always``: the moved copy's score alone (the image itself when it is not moved).

Either needs the moved copy's own flow passes: with ``orientation`` on (fashion-glow), its
vertical flip too, so ``min`` takes four passes per image, over the three issue 13 allows.

    .venv/bin/python -m scripts.recentre_probe [models/fashion-glow/1] [--limit 2]
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import numpy as np
import torch

from service.conformal import conformal_p_values
from training.augment import shift_images
from training.calibrate import load_holdout
from training.data import recorded_training_split
from training.evaluate import eager_flow, in_distribution_images
from training.guarantees import score_images
from training.metrics import auroc, flag_rate, fpr_at_tpr
from training.ood_sets import Context, SetUnavailable, build_set, default_sets
from training.scoring import open_calibrated_bundle
from training.targets import REPORT_ALPHA


class Scored(NamedTuple):
    plain: np.ndarray  # the bundle's default score, as served
    always: np.ndarray  # the moved copy's (the image's when not moved)
    moved: float  # share of the images the canonicalisation moved

    @property
    def minimum(self) -> np.ndarray:
        """The lower of the image's score and its moved copy's."""
        return np.minimum(self.plain, self.always)


def ink(images: np.ndarray) -> np.ndarray:
    """|pixel - the median of the image's border|, channels averaged: where the drawing is, on any background."""
    x = images.astype(np.float64).mean(axis=1)
    border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], axis=1)
    return np.abs(x - np.median(border, axis=1)[:, None, None])


def centres(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mass = ink(images)
    total = np.maximum(mass.sum(axis=(1, 2)), 1e-9)
    rows = (mass.sum(axis=2) * np.arange(mass.shape[1])).sum(axis=1) / total
    cols = (mass.sum(axis=1) * np.arange(mass.shape[2])).sum(axis=1) / total
    return rows, cols


def recentre(images: np.ndarray, target: tuple[float, float], limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image moved toward ``target`` (row, col), and which images moved at all."""
    rows, cols = centres(images)
    dy = np.clip(np.rint(target[0] - rows), -limit, limit).astype(int)
    dx = np.clip(np.rint(target[1] - cols), -limit, limit).astype(int)
    moved = shift_images(torch.from_numpy(images), torch.from_numpy(dy), torch.from_numpy(dx)).numpy()
    return moved, (dy != 0) | (dx != 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.recentre_probe", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default="models/fashion-glow/1")
    parser.add_argument("--limit", type=int, default=2, help="move an image at most this many pixels per axis")
    args = parser.parse_args(argv)
    bundle, detector = open_calibrated_bundle(args.bundle, threads=0)
    manifest = bundle.manifest
    shape = tuple(manifest.input.shape)
    default = detector.default_score
    start, stop = manifest.data.slices["train"]
    train_rows, train_cols = centres(recorded_training_split(manifest.data, shape)[start:stop])
    target = (float(np.median(train_rows)), float(np.median(train_cols)))

    def scored(images: np.ndarray, name: str) -> Scored:
        plain = score_images(bundle, detector, images, name, None)
        moved, changed = recentre(images, target, args.limit)
        always = plain.copy()
        if changed.any():
            always[changed] = score_images(bundle, detector, moved[changed], f"{name}, moved", None)
        return Scored(plain, always, float(changed.mean()))

    holdout = load_holdout(manifest)
    reference = scored(holdout[detector.calibration_part(len(holdout))], "calibration part")
    columns = ("plain", "minimum", "always")
    references = {column: np.sort(getattr(reference, column)) for column in columns}

    def flagged(ood: Scored) -> str:
        p_values = (conformal_p_values(references[c], getattr(ood, c)) for c in columns)
        return " / ".join(f"{flag_rate(p, REPORT_ALPHA):.4f}" for p in p_values)

    test, _ = in_distribution_images(bundle, None)
    in_dist = scored(test, "test")
    print(f"{args.bundle}: `{default}`; training median centre (row, col) {target[0]:.2f}, {target[1]:.2f} px")
    print(f"{'set':16s} moved  AUROC plain / min / always    FPR95 plain / min / always    flagged at {REPORT_ALPHA}")
    print(f"{'test':16s} {in_dist.moved:.2f}  {'':57s} {flagged(in_dist)}")
    ctx = Context(shape, test)
    names = default_sets(manifest.data.source if manifest.data else None)
    if "latent_zeroed" in names:
        ctx.flow, _ = eager_flow(bundle, None, test)
    for name in names:
        try:
            ood = scored(build_set(name, ctx).images, name)
        except SetUnavailable as exc:
            print(f"{name:16s} skipped: {exc}")
            continue
        aurocs = " / ".join(f"{auroc(getattr(in_dist, c), getattr(ood, c)):.4f}" for c in columns)
        fprs = " / ".join(f"{fpr_at_tpr(getattr(in_dist, c), getattr(ood, c)):.4f}" for c in columns)
        print(f"{name:16s} {ood.moved:.2f}  {aurocs}    {fprs}    {flagged(ood)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
