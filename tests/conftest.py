"""Shared fixtures: tiny models and data built in-process; no real dataset needed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

TINY_SHAPE = (1, 28, 28)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run where CUDA is present and are skipped, with the reason, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def require_tool(name: str, package: str) -> str:
    """The path of a system tool the tests drive for real.

    Missing on a developer's machine, the test is skipped with the install hint;
    missing under CI (``CI=true``), it fails, because ``make test`` installs it
    there and a skip would hide a broken install step.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: install the Debian package {package} (make system-deps does, as root)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def make_tiny_flow(seed: int = 0, shape: tuple[int, int, int] = TINY_SHAPE, levels: int = 2):
    """An untrained-but-initialised 2-level Glow small enough to export in seconds."""
    from training.architectures import FlowConfig, build_flow
    from training.flows import dequantize, initialize_actnorms

    config = FlowConfig(levels=levels, steps=1, hidden=8)
    flow = build_flow(config, shape, seed=seed)
    rng = np.random.default_rng(seed)
    pixels = torch.from_numpy(rng.integers(0, 256, size=(64, *shape), dtype=np.uint8))
    initialize_actnorms(flow, lambda: flow(dequantize(pixels, noise=True)))
    return flow.eval(), config


def export_tiny_bundle(
    models_root: Path, name: str = "tiny", version: str = "1", seed: int = 0, shape: tuple[int, int, int] = TINY_SHAPE
):
    from training.export import export_bundle

    flow, config = make_tiny_flow(seed, shape)
    bundle_dir = models_root / name / version
    manifest = export_bundle(flow, bundle_dir, name=name, version=version, architecture=config.model_dump(mode="json"))
    return bundle_dir, manifest


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory) -> Path:
    """A model repository holding one exported tiny bundle, ``tiny/1``. Read-only: copy it to change it."""
    root = tmp_path_factory.mktemp("models")
    export_tiny_bundle(root)
    return root


GRAY8, RGB8 = (1, 8, 8), (3, 8, 8)


@pytest.fixture(scope="session")
def mixed_models_root(tmp_path_factory) -> Path:
    """Two tiny bundles of different shapes: ``gray8/1`` (L, 8x8) and ``rgb8/1`` (RGB, 8x8). Read-only."""
    root = tmp_path_factory.mktemp("mixed-models")
    export_tiny_bundle(root, "gray8", shape=GRAY8, seed=1)
    export_tiny_bundle(root, "rgb8", shape=RGB8, seed=2)
    return root
