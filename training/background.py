"""The background flow of the likelihood-ratio score (Ren et al. 2019): train it, put it in a bundle.

A flow's likelihood is dominated by population-level "background" statistics
(smooth regions, dark borders) that OOD images share with the training data.
Ren et al. train a second, *background* model on the same data with a fraction
of the pixels replaced by uniform noise (and L2 regularization), so that it
learns those background statistics but not the semantics; the score
``bpd - background bpd`` cancels what the two share.

``oodgate-background train CONFIG`` trains it with the ordinary training loop
(same architecture config format, plus a ``background:`` block);
``oodgate-background attach CHECKPOINT BUNDLE_DIR`` exports it, parity-checked,
as ``background.onnx`` / ``background.pt`` into an existing bundle (manifest
``files`` keys ``background_onnx`` / ``background_torchscript``). Attaching
changes which scores the bundle has, so any calibration is dropped and must be
redone with ``oodgate-calibrate``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from service.artifact import (
    BACKGROUND_ONNX_FILE,
    BACKGROUND_ONNX_KEY,
    BACKGROUND_TORCHSCRIPT_FILE,
    BACKGROUND_TORCHSCRIPT_KEY,
    CALIBRATION_FILE,
    CALIBRATION_KEY,
    MANIFEST_NAME,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    file_entry,
    load_manifest,
    write_manifest,
)
from training.architectures import MultiScaleFlow
from training.checkpoints import model_from_checkpoint
from training.config import RunConfig, load_config
from training.data import Slices
from training.train import Trainer, run_training


class BackgroundSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mutation_rate: float = Field(0.15, ge=0.0, le=1.0, description="share of pixels replaced by uniform noise")
    weight_decay: float = Field(1e-4, ge=0.0, description="L2 penalty on the weights (Ren et al.'s lambda)")


def background_kind(spec: BackgroundSpec) -> str:
    """What the manifest calls the flow: a general-domain one (no mutation) or Ren et al.'s perturbed one."""
    return "general-domain" if spec.mutation_rate == 0 else "perturbed"


class BackgroundRunConfig(RunConfig):
    background: BackgroundSpec = BackgroundSpec()


def perturb(pixels: torch.Tensor, rate: float, generator: np.random.Generator) -> torch.Tensor:
    """Replace each pixel with probability ``rate`` by a uniform draw from 0..255 (Ren et al.'s mutation)."""
    array = pixels.numpy().copy()
    mask = generator.random(array.shape) < rate
    array[mask] = generator.integers(0, 256, size=int(mask.sum()), dtype=np.uint8)
    return torch.from_numpy(array)


class BackgroundTrainer(Trainer):
    """The ordinary training loop on mutated batches, with L2 regularization; checkpoints as usual."""

    def __init__(self, config: BackgroundRunConfig, slices: Slices, resume: Path | None = None) -> None:
        super().__init__(config, slices, resume=None)
        self.spec = config.background
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.tc.lr, weight_decay=self.spec.weight_decay)
        # the ordinary schedule (warm-up, then the decay from decay_start), on the new optimizer
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        if resume is not None:
            self._resume(resume)

    def _batches(self, epoch: int):
        # seeded by epoch like the shuffle, so a resumed run sees the same noise
        generator = np.random.default_rng([self.tc.seed, epoch, 7919])
        for pixels in super()._batches(epoch):
            yield perturb(pixels, self.spec.mutation_rate, generator)


def background_from_checkpoint(path: str | Path) -> tuple[MultiScaleFlow, BackgroundRunConfig, dict]:
    return model_from_checkpoint(path, BackgroundRunConfig)


def attach_background(
    flow: MultiScaleFlow, bundle_dir: str | Path, info: dict | None = None, real_images: np.ndarray | None = None
) -> None:
    """Export ``flow`` into the bundle as its background graph; parity-checked like the main graph."""
    from training.export import check_parity, export_onnx, export_torchscript, parity_images, prepare_for_export

    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir, verify=True)
    shape = tuple(int(s) for s in flow.input_shape)
    if shape != tuple(manifest.input.shape):
        raise ValueError(f"background flow takes {shape}, the bundle's model {tuple(manifest.input.shape)}")
    graph = prepare_for_export(flow)
    example = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    with tempfile.TemporaryDirectory(dir=bundle_dir.parent) as scratch:
        scratch = Path(scratch)
        export_torchscript(graph, example, scratch / TORCHSCRIPT_FILE)
        export_onnx(graph, example, scratch / ONNX_FILE)
        parity = check_parity(graph, scratch, parity_images(shape, real_images))
        shutil.move(scratch / ONNX_FILE, bundle_dir / BACKGROUND_ONNX_FILE)
        shutil.move(scratch / TORCHSCRIPT_FILE, bundle_dir / BACKGROUND_TORCHSCRIPT_FILE)
    files = {k: v for k, v in manifest.files.items() if k != CALIBRATION_KEY}
    files[BACKGROUND_ONNX_KEY] = file_entry(bundle_dir, BACKGROUND_ONNX_FILE)
    files[BACKGROUND_TORCHSCRIPT_KEY] = file_entry(bundle_dir, BACKGROUND_TORCHSCRIPT_FILE)
    training = {**manifest.training, "background": {**(info or {}), "export_parity": parity}}
    write_manifest(bundle_dir, manifest.model_copy(update={"files": files, "training": training, "calibration": None}))
    stale = bundle_dir / CALIBRATION_FILE
    if stale.exists():
        stale.unlink()


def detach_background(bundle_dir: str | Path) -> None:
    """Take the background graph out of a bundle (files and manifest); the calibration is dropped with it."""
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir, verify=True)
    keys = (BACKGROUND_ONNX_KEY, BACKGROUND_TORCHSCRIPT_KEY, CALIBRATION_KEY)
    for key in keys:
        if key in manifest.files:
            (bundle_dir / manifest.files[key].path).unlink(missing_ok=True)
    files = {k: v for k, v in manifest.files.items() if k not in keys}
    training = {k: v for k, v in manifest.training.items() if k != "background"}
    write_manifest(bundle_dir, manifest.model_copy(update={"files": files, "training": training, "calibration": None}))


def _train(args) -> int:
    config = load_config(args.config, BackgroundRunConfig)
    if args.out_dir:
        config.out_dir = args.out_dir
    resume = "auto" if args.resume else None
    return run_training(BackgroundTrainer, config, resume, args.max_minutes, "oodgate-background")


def _attach(args) -> int:
    if not Path(args.checkpoint).is_file() or not (Path(args.bundle) / MANIFEST_NAME).is_file():
        print(
            f"oodgate-background attach: expected a checkpoint file, then a bundle directory with a "
            f"{MANIFEST_NAME}; got {args.checkpoint!r} and {args.bundle!r}",
            file=sys.stderr,
        )
        return 2
    flow, config, checkpoint = background_from_checkpoint(args.checkpoint)
    info = {
        "kind": background_kind(config.background),
        "data": config.data.path,
        "checkpoint": Path(args.checkpoint).name,
        "steps": checkpoint.get("step"),
        "best_validation_bpd": checkpoint.get("best_val_bpd"),
        "architecture": config.model.model_dump(mode="json"),
        **config.background.model_dump(),
    }
    attach_background(flow, args.bundle, info)
    print(f"attached background flow to {args.bundle}; calibration dropped: run oodgate-calibrate {args.bundle}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oodgate-background", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the background flow from a config with a background: block")
    train.add_argument("config")
    train.add_argument("--resume", action="store_true", help="resume from <run dir>/last.pt if there is one")
    train.add_argument("--max-minutes", type=float)
    train.add_argument("--out-dir")
    attach = sub.add_parser("attach", help="export a background checkpoint into a bundle")
    attach.add_argument("checkpoint")
    attach.add_argument("bundle")
    args = parser.parse_args(argv)
    return _train(args) if args.command == "train" else _attach(args)


if __name__ == "__main__":
    sys.exit(main())
