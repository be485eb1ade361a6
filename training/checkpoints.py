"""Training checkpoints: the file names, writing and reading them, and the flow one holds.

A checkpoint is a dict of tensors and plain values, written atomically and read
back with ``weights_only=True``: no pickled module ever. ``init_from`` (fine-tuning)
takes a parent checkpoint only when :func:`check_parent` finds it compatible; a
model bundle can be a parent too (:func:`checkpoint_from_bundle`), since it carries
its weights, architecture, data record and training config.
"""

from __future__ import annotations

from pathlib import Path

import torch

from service.artifact import MANIFEST_NAME, WEIGHTS_KEY, load_manifest
from training.architectures import MultiScaleFlow, build_flow
from training.config import RunConfig
from training.data import Slices
from training.flows import all_actnorms_initialized
from training.weights import load_weights

LAST_CHECKPOINT = "last.pt"  # written every few steps: what --resume continues from
BEST_CHECKPOINT = "best.pt"  # written on a new best validation objective: what oodgate-export takes


class IncompatibleCheckpoint(ValueError):
    """``init_from`` names a checkpoint of another architecture, input shape or data slicing."""


def checkpoint_from_bundle(bundle_dir: Path) -> dict:
    """A bundle as the parent of a fine-tune: its ``weights.npz`` and what its manifest says of its training.

    Why: a shipped bundle's run directory is not committed (runs/ never is), but its
    weights and training record are, so a fine-tune can start from exactly what serves.
    """
    manifest = load_manifest(bundle_dir)
    training, data = manifest.training, manifest.data
    if data is None or "config" not in training or WEIGHTS_KEY not in manifest.files:
        raise IncompatibleCheckpoint(f"init_from {bundle_dir}: the bundle records no data, training config or weights")
    config = {
        "name": manifest.name,
        "version": manifest.version,
        "data": {"source": data.source, "path": data.path},
        "model": manifest.architecture,
        "train": training["config"],
        "negative": training.get("negative"),
        "augment": training.get("augment"),
    }
    best = training.get("best_validation_objective", training.get("best_validation_bpd"))
    return {
        "model": load_weights(bundle_dir / manifest.files[WEIGHTS_KEY].path),
        "config": config,
        "input_shape": list(manifest.input.shape),
        "slices": {name: list(bounds) for name, bounds in data.slices.items()},
        "step": training.get("steps", 0),
        "seconds": training.get("seconds"),
        "best_val_bpd": best,
        "init_from": training.get("init_from"),
    }


def load_parent(path: Path) -> dict | None:
    """``init_from``'s parent: a bundle directory, a checkpoint file, or None when there is neither."""
    if (path / MANIFEST_NAME).is_file():
        return checkpoint_from_bundle(path)
    return load_checkpoint(path) if path.is_file() else None


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(
    path: str | Path, config_type: type[RunConfig] = RunConfig
) -> tuple[MultiScaleFlow, RunConfig, dict]:
    """The trained flow (eval mode), its run config as ``config_type`` and the raw checkpoint."""
    checkpoint = load_checkpoint(path)
    config = config_type.model_validate(checkpoint["config"])
    model = build_flow(config.model, tuple(checkpoint["input_shape"]), seed=config.train.seed)
    model.load_state_dict(checkpoint["model"])
    if not all_actnorms_initialized(model):
        raise SystemExit(f"{path}: ActNorm layers are not initialised; not a trained checkpoint")
    return model.eval(), config, checkpoint


def check_parent(
    path: Path, checkpoint: dict | None, config: RunConfig, input_shape: tuple[int, ...], slices: Slices
) -> RunConfig:
    """The run config of ``init_from``'s checkpoint, refused when its architecture, input or data slicing differ.

    The slicing check is what keeps the held-out images held out: a parent run
    trained on other positions could have seen them.
    """
    if checkpoint is None:
        raise IncompatibleCheckpoint(f"init_from: no checkpoint at {path}")
    parent = RunConfig.model_validate(checkpoint["config"])
    problems = []
    if parent.model != config.model:
        problems.append(f"architecture {parent.model.model_dump()} != {config.model.model_dump()}")
    if tuple(checkpoint["input_shape"]) != input_shape:
        problems.append(f"input shape {tuple(checkpoint['input_shape'])} != {input_shape}")
    data, ours = (parent.data.source, parent.data.path), (config.data.source, config.data.path)
    if data != ours:
        problems.append(f"data {':'.join(data)} != {':'.join(ours)}")
    ranges = {k: list(v) for k, v in slices.ranges.items()}
    if checkpoint.get("slices") != ranges:
        problems.append(f"slices {checkpoint.get('slices')} != {ranges}")
    if problems:
        raise IncompatibleCheckpoint(f"init_from {path}: " + "; ".join(problems))
    return parent
