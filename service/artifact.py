"""The model-bundle contract: ``models/<name>/<version>/{model.onnx, model.pt, weights.npz, manifest.json}``.

This module is the one definition of the manifest schema and of the graph's
input and output names. Export (``training``) writes bundles through it and the
service reads them through it, so the two can never disagree. Bundles are
TorchScript and ONNX files plus JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
INPUT_NAME = "images"
SCALAR_OUTPUTS = ("log_pz", "log_det", "log_px", "bpd")  # one number per image
LEVEL_OUTPUTS = ("log_pz_levels", "log_det_levels")  # one number per image and flow level
OUTPUT_NAMES = SCALAR_OUTPUTS + LEVEL_OUTPUTS  # what a response shows per image
# Per image and level, the mean squared standardized latent (a typicality statistic, see
# training.flows.reshape.gaussian_log_prob_and_energy): an input of the dose score only, never shown.
# Graphs exported before it was added lack it; the manifest's ``outputs`` says which a graph has.
LATENT_ENERGY_OUTPUT = "latent_energy_levels"
GRAPH_OUTPUTS = OUTPUT_NAMES + (LATENT_ENERGY_OUTPUT,)  # what export writes, in this order
# The graph, one file per backend, listed in ``files`` under the backend's name.
ONNX_KEY, TORCHSCRIPT_KEY = "onnx", "torchscript"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"
# The eager flow's state dict as plain arrays, for what needs its inverse (training side only).
WEIGHTS_FILE = "weights.npz"
WEIGHTS_KEY = "weights"
# The optional background flow (the likelihood-ratio score's general model of images).
BACKGROUND_ONNX_FILE = "background.onnx"
BACKGROUND_TORCHSCRIPT_FILE = "background.pt"
BACKGROUND_ONNX_KEY = "background_onnx"
BACKGROUND_TORCHSCRIPT_KEY = "background_torchscript"
# The OOD calibration's arrays; their layout and the manifest summary are service.calibration_file's.
CALIBRATION_FILE = "calibration.npz"
CALIBRATION_KEY = "calibration"
# per backend: the main graph's ``files`` key and default file name, and the background graph's ``files`` key
GRAPH_KEYS = {"onnx": ONNX_KEY, "torchscript": TORCHSCRIPT_KEY}
GRAPH_FILES = {"onnx": ONNX_FILE, "torchscript": TORCHSCRIPT_FILE}
BACKGROUND_KEYS = {"onnx": BACKGROUND_ONNX_KEY, "torchscript": BACKGROUND_TORCHSCRIPT_KEY}


class ArtifactError(RuntimeError):
    """A bundle is missing, malformed, or its files do not match the manifest."""


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = INPUT_NAME
    dtype: Literal["uint8"] = "uint8"
    shape: tuple[int, int, int] = Field(description="C, H, W; the batch axis is dynamic")
    color_mode: Literal["L", "RGB"]

    @property
    def dims(self) -> int:
        c, h, w = self.shape
        return c * h * w


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str
    bytes: int


class TrainingData(BaseModel):
    """Where the training images came from and which slices were (not) trained on."""

    model_config = ConfigDict(extra="allow")

    source: str
    split: str
    path: str
    sha256: str = Field(description="sha256 of the uint8 image array of the whole split")
    slices: dict[str, tuple[int, int]] = Field(description="[start, stop) positions in the split")
    holdout_sha256: str = Field(description="sha256 of the held-out images, for the calibration step")
    slice_seed: int | None = Field(None, description="slices count positions in this seed's permutation, if set")
    channels: int | None = Field(None, description="channels the images were read or converted to (1 or 3)")
    size: tuple[int, int] | None = Field(None, description="H, W the images were resized to, if any")
    test_source: str | None = Field(None, description="the in-distribution test set: its source kind ...")
    test_path: str | None = Field(None, description="... its path (never trained or calibrated on, only measured)")
    test_sha256: str | None = Field(None, description="... and the sha256 of its uint8 image array")
    test_every: int | None = Field(
        None, description="the test set is every k-th image of the data as read (index % k == 0), the rest trains"
    )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    created: str
    input: InputSpec
    outputs: list[str] = Field(default_factory=lambda: list(OUTPUT_NAMES))
    levels: int = Field(ge=1, description="columns of log_pz_levels and log_det_levels")
    architecture: dict[str, Any]
    training: dict[str, Any] = Field(default_factory=dict)
    data: TrainingData | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    calibration: dict[str, Any] | None = Field(None, description="OOD calibration state, defined by service.ood")
    files: dict[str, FileEntry]
    packages: dict[str, str] = Field(default_factory=dict)


def has_latent_energy(manifest: Manifest) -> bool:
    """Whether the bundle's graph outputs :data:`LATENT_ENERGY_OUTPUT` (graphs exported since it was added)."""
    return LATENT_ENERGY_OUTPUT in manifest.outputs


def has_background(manifest: Manifest) -> bool:
    """Whether the bundle ships a background graph (for any backend)."""
    return any(key in manifest.files for key in BACKGROUND_KEYS.values())


def bundle_file(manifest: Manifest, bundle_dir: Path, key: str, default: str | None) -> Path | None:
    """The path of the file listed under ``key``, else ``default`` when that file exists; None when neither."""
    entry = manifest.files.get(key)
    if entry is not None:
        return bundle_dir / entry.path
    if default is not None and (bundle_dir / default).exists():
        return bundle_dir / default
    return None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(bundle_dir: Path, name: str) -> FileEntry:
    path = bundle_dir / name
    return FileEntry(path=name, sha256=sha256_file(path), bytes=path.stat().st_size)


def load_manifest(bundle_dir: str | Path, verify: bool = True) -> Manifest:
    """Read and validate ``manifest.json``; with ``verify``, check every file's sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not path.exists():
        raise ArtifactError(f"no {MANIFEST_NAME} in {bundle_dir}")
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ArtifactError(f"{path} does not follow the manifest schema: {exc}") from exc
    if manifest.schema_version != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema version {manifest.schema_version}, this oodgate reads {SCHEMA_VERSION}")
    if verify:
        for key, entry in manifest.files.items():
            file = bundle_dir / entry.path
            if not file.exists():
                raise ArtifactError(f"{bundle_dir}: {key} file {entry.path} is missing")
            actual = sha256_file(file)
            if actual != entry.sha256:
                raise ArtifactError(
                    f"{file}: sha256 {actual[:12]}... does not match the manifest ({entry.sha256[:12]}...)"
                )
    return manifest


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    path = Path(bundle_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path


def discover_bundles(models_root: str | Path) -> list[Path]:
    """Every ``<name>/<version>/`` under ``models_root`` that holds a manifest, sorted."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob(f"*/*/{MANIFEST_NAME}"))


def bits_per_dim(log_px, dims: int):
    """DESIGN.md's ``bpd = (-log_px + D ln 256) / (D ln 2)``; works on floats, numpy and torch."""
    return (-log_px + dims * math.log(256.0)) / (dims * math.log(2.0))
