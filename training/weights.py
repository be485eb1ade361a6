"""The eager flow's weights as a bundle file, so the bundle alone can rebuild the flow.

The exported graphs only run forward. Anything that needs the flow's inverse
(Algorithm 1 of the semantics paper, the ``latent_zeroed`` OOD set; sampling)
needs the eager model, and a training checkpoint lives in the ignored ``runs/``
folder of whoever trained it. So export also writes ``weights.npz``: the flow's
state dict as plain named arrays (``np.load(allow_pickle=False)``, nothing is
unpickled), listed with its sha256 in the manifest like every other file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.artifact import WEIGHTS_FILE, WEIGHTS_KEY, ArtifactError, Manifest, load_manifest
from training.architectures import FlowConfig, MultiScaleFlow, build_flow
from training.flows import all_actnorms_initialized


def save_weights(flow: MultiScaleFlow, path: Path) -> None:
    """Write the flow's state dict (parameters and persistent buffers) as named arrays."""
    arrays = {name: tensor.detach().cpu().numpy() for name, tensor in flow.state_dict().items()}
    with open(path, "wb") as handle:  # a handle, so numpy does not append ".npz" to the name
        np.savez(handle, **arrays)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    with np.load(path, allow_pickle=False) as arrays:
        return {name: torch.from_numpy(arrays[name].copy()) for name in arrays.files}


def build_bundle_flow(manifest: Manifest) -> MultiScaleFlow:
    """An untrained flow of the bundle's architecture and input shape (weights still to load)."""
    config = FlowConfig.model_validate(manifest.architecture)
    return build_flow(config, tuple(manifest.input.shape))


def flow_from_bundle(bundle_dir: str | Path) -> MultiScaleFlow:
    """The bundle's eager flow (eval mode), rebuilt from its manifest and ``weights.npz``."""
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)  # verifies weights.npz's sha256 with the rest
    entry = manifest.files.get(WEIGHTS_KEY)
    if entry is None:
        raise ArtifactError(
            f"{bundle_dir} carries no {WEIGHTS_FILE} (exported before bundles carried their weights): "
            "re-export it from its training checkpoint with oodgate-export"
        )
    flow = build_bundle_flow(manifest)
    try:
        flow.load_state_dict(load_weights(bundle_dir / entry.path))
    except RuntimeError as exc:
        raise ArtifactError(f"{bundle_dir / entry.path} does not fit the manifest's architecture: {exc}") from exc
    if not all_actnorms_initialized(flow):
        raise ArtifactError(f"{bundle_dir / entry.path}: ActNorm layers are not initialised; not a trained flow")
    return flow.eval()
