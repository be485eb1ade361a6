"""A bundle rebuilds its eager flow from weights.npz, and a bundle without one is told to be re-exported."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from service.artifact import ArtifactError, load_manifest, write_manifest
from tests.conftest import make_tiny_flow
from training.export import prepare_for_export, run_onnx
from training.weights import flow_from_bundle

IMAGES = np.random.default_rng(0).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8)


def outputs(flow) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.numpy() for o in prepare_for_export(flow)(torch.from_numpy(IMAGES))]


def strip_weights(bundle_dir):
    manifest = load_manifest(bundle_dir)
    del manifest.files["weights"]
    write_manifest(bundle_dir, manifest)
    (bundle_dir / "weights.npz").unlink()


@pytest.fixture
def bundle(tmp_path, tiny_models_root):
    path = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", path)
    return path


def test_export_lists_weights_and_the_bundle_rebuilds_the_same_flow(bundle):
    manifest = load_manifest(bundle)  # verifies weights.npz's sha256 with the rest
    assert manifest.files["weights"].path == "weights.npz"
    original, _ = make_tiny_flow(seed=0)  # the flow the session's tiny bundle was exported from
    rebuilt = flow_from_bundle(bundle)
    for ours, theirs in zip(outputs(rebuilt), outputs(original), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(outputs(rebuilt)[3], run_onnx(bundle / "model.onnx", IMAGES)[3], atol=1e-4)


def test_weights_that_do_not_match_the_manifest_are_refused(bundle):
    with open(bundle / "weights.npz", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01")
    with pytest.raises(ArtifactError, match="sha256"):
        flow_from_bundle(bundle)


def test_a_bundle_without_weights_says_how_to_get_them(bundle):
    strip_weights(bundle)
    with pytest.raises(ArtifactError, match="re-export it from its training checkpoint"):
        flow_from_bundle(bundle)
