"""A probe, not a score: how far a small classifier of "the user's images vs images in general" gets.

Outlier exposure (Hendrycks et al. 2019) in its plainest form: a small CNN learns to
tell the bundle's own training slice from the general-domain mix that the build
already makes for the background flow (``training/general_images.py``), and its logit
for "general" is read as an OOD score. Both inputs are domain-free in the sense issue
13 asks: the user's images and this machine's packages. It needs no OOD example, but it
is not a flow, has no calibration and is not in any bundle; this measures whether such
a discriminative part could lift the near-OOD sets the flows leave at 0.6-0.85, for the
next engineer to decide. The tune sets' sources are in the mix, so only the held-out
and final rows say anything. Beside it: the bundle's default score, and the two joined as
``combined`` joins its parts (Fisher's sum of tail evidence, each against the bundle's
held-out slice, which neither the flow nor this classifier trained on).

One classifier swings with its seed (Symbola: 0.49 to 0.77 between two seeds), so ``--seeds`` trains
one per seed and adds their mean logit (a plain ensemble, the usual cure for that
variance); ``joined`` then joins the mean. ``--shift k`` trains on images moved by up to
``k`` pixels and mirrored (:mod:`training.augment`), to see whether the classifier leans on
position.

    .venv/bin/python -m scripts.discriminator_probe models/clipart-glow/1 data/general/general32-v2.npz \\
        data/colour-ood [--steps 1500] [--seeds 0 1 2 3] [--shift 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.scores import tail_evidence
from training.augment import random_shift
from training.calibrate import load_holdout
from training.colour_sets import read_index
from training.data import load_npz, recorded_training_split
from training.evaluate import in_distribution_images
from training.guarantees import score_images
from training.metrics import auroc
from training.scoring import open_calibrated_bundle


def small_cnn(channels: int) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *block(channels, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 1),
    )  # fmt: skip


def as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float() / 127.5 - 1.0


@torch.no_grad()
def logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    model.eval()
    return np.concatenate([model(as_input(images[i : i + 512])).squeeze(1).numpy() for i in range(0, len(images), 512)])


def train_member(own: np.ndarray, general: np.ndarray, seed: int, steps: int, shift: int) -> nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = small_cnn(own.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    half = 32
    target = torch.cat([torch.zeros(half), torch.ones(half)])
    for step in range(steps):
        batch = torch.from_numpy(
            np.concatenate([own[rng.integers(0, len(own), half)], general[rng.integers(0, len(general), half)]])
        )
        if shift:
            batch = random_shift(batch, shift)
            mirror = torch.rand(len(batch)) < 0.5
            batch[mirror] = batch[mirror].flip(-1)
        model.train()
        loss = loss_fn(model(as_input(batch.numpy())).squeeze(1), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 500 == 0:
            print(f"seed {seed} step {step + 1}: loss {loss.item():.3f}", flush=True)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.discriminator_probe", description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("general", help="the general-domain mix (.npz)")
    parser.add_argument("sets", help="folder of OOD sets (.npz) with their sets.json (training.colour_sets)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="one classifier per seed; more than one: their mean logit too"
    )
    parser.add_argument(
        "--shift", type=int, default=0, help="train on images moved by up to this many pixels, and mirrored"
    )
    args = parser.parse_args(argv)
    bundle, detector = open_calibrated_bundle(args.bundle, threads=0)
    manifest = bundle.manifest
    shape = tuple(manifest.input.shape)
    start, stop = manifest.data.slices["train"]
    own = recorded_training_split(manifest.data, shape)[start:stop]  # what the flow trained on; never the holdout
    general = load_npz(args.general)
    members = [train_member(own, general, seed, args.steps, args.shift) for seed in args.seeds]

    def ensemble(images: np.ndarray) -> list[np.ndarray]:
        each = [logits(member, images) for member in members]
        return [*each, np.mean(each, axis=0)] if len(each) > 1 else each

    default = detector.default_score
    holdout = load_holdout(manifest)
    gate_reference = np.sort(score_images(bundle, detector, holdout, "holdout", None))
    ensemble_reference = np.sort(ensemble(holdout)[-1])

    def scores(images: np.ndarray, name: str) -> list[np.ndarray]:
        flow, classifiers = score_images(bundle, detector, images, name, None), ensemble(images)
        joined = tail_evidence(gate_reference, flow) + tail_evidence(ensemble_reference, classifiers[-1])
        return [flow, *classifiers, joined]

    test = scores(in_distribution_images(bundle, None)[0], "test")  # the report's own in-distribution set
    listed = sorted(read_index(Path(args.sets)), key=lambda entry: (entry.group, entry.name))
    columns = [default, *(f"seed{seed}" for seed in args.seeds), *(["mean"] if len(args.seeds) > 1 else []), "joined"]
    print(f"AUROC against the bundle's {len(test[0])} test images: " + ", ".join(columns))
    for entry in listed:
        path = Path(args.sets) / entry.file
        if path.exists():
            ood = scores(load_npz(path), entry.name)
            print(
                f"  {entry.group:9s} {entry.name:28s} "
                + "  ".join(f"{auroc(a, b):.3f}" for a, b in zip(test, ood, strict=True))
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
