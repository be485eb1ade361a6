"""``python -m training.classifier``: the small FashionMNIST CNN that stands behind the sidecar demo.

oodgate's sidecar mode needs a real classifier to guard, trained on the same data
as the flow so that "in distribution" means the same thing for both. This module
trains a deliberately small CNN (two conv blocks, ~0.1 M parameters, a couple of
epochs on CPU) on the flow's ``train`` slice, measures it on the test split, and
exports it as TorchScript (never a pickle) with a JSON manifest beside it:

    examples/classifier/model.pt       uint8 [B,1,28,28] -> logits [B,10]
    examples/classifier/manifest.json  labels, input, accuracy, sha256, command

The scaling ``pixel / 255`` and the normalisation live inside the graph, so the
serving app hands it raw pixels exactly as oodgate's flow graphs take them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.artifact import sha256_file
from training.data import FASHION_MNIST_DIR, DatasetError, SliceSpec, load_fashion_mnist, split_training_set

LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# FashionMNIST training-split pixel statistics (of pixel/255); fixed so the graph is reproducible.
MEAN, STD = 0.2860, 0.3530


class SmallCNN(nn.Module):
    """conv(16)-pool-conv(32)-pool-fc(64)-fc(10); takes raw uint8 pixels."""

    def __init__(self, classes: int = len(LABELS)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / 255.0 - MEAN) / STD
        return self.head(self.features(x))


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(torch.from_numpy(images[start : start + batch_size]))
        correct += int((logits.argmax(1).numpy() == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train(
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (len(images) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = np.random.default_rng(seed + epoch).permutation(len(images))
        started, total = time.monotonic(), 0.0
        for index, start in enumerate(range(0, len(order) - batch_size + 1, batch_size)):
            batch = np.sort(order[start : start + batch_size])
            logits = model(torch.from_numpy(images[batch]))
            loss = loss_fn(logits, torch.from_numpy(labels[batch].astype(np.int64)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
            if index % 100 == 0:
                print(f"epoch {epoch + 1} step {index}: loss {total / (index + 1):.4f}", file=sys.stderr)
        print(f"epoch {epoch + 1} done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return model.eval()


def export(model: SmallCNN, out_dir: Path, metrics: dict, command: str) -> dict:
    """TorchScript by tracing on uint8 input, checked against eager, plus the JSON manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    scripted = torch.jit.trace(model, example)
    path = out_dir / "model.pt"
    scripted.save(str(path))
    reloaded = torch.jit.load(str(path))
    with torch.no_grad():
        if not torch.allclose(reloaded(example), model(example), atol=1e-5):
            raise RuntimeError("TorchScript export does not match the eager model")
    manifest = {
        "name": "fashion-cnn",
        "version": "1",
        "input": {"dtype": "uint8", "shape": [1, 28, 28], "color_mode": "L"},
        "output": "logits",
        "labels": list(LABELS),
        "metrics": metrics,
        "files": {"model": {"path": "model.pt", "sha256": sha256_file(path), "bytes": path.stat().st_size}},
        "training": {"data": "fashion-mnist train slice (SliceSpec defaults)", "command": command},
        "packages": {"torch": torch.__version__},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.classifier", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(FASHION_MNIST_DIR), help="FashionMNIST IDX directory")
    parser.add_argument("--out", default="examples/classifier", help="where model.pt and manifest.json go")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CPU is usually shared)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        train_images, train_labels = load_fashion_mnist("train", args.data)
        test_images, test_labels = load_fashion_mnist("test", args.data)
    except DatasetError as exc:
        print(f"training.classifier: {exc}", file=sys.stderr)
        return 2
    # Same positions as the flow: never train on the holdout the OOD calibration uses.
    slices = split_training_set(np.arange(len(train_images)), SliceSpec())
    train_index = slices.train
    started = time.monotonic()
    model = train(train_images[train_index], train_labels[train_index], args.epochs, seed=args.seed)
    seconds = time.monotonic() - started
    metrics = {
        "test_accuracy": accuracy(model, test_images, test_labels),
        "train_images": int(len(train_index)),
        "epochs": args.epochs,
        "train_seconds": round(seconds, 1),
    }
    command = "python -m training.classifier " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    export(model, Path(args.out), metrics, command.strip())
    print(f"test accuracy {metrics['test_accuracy']:.4f} after {args.epochs} epochs ({seconds:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
