"""Runtimes and the model repository: backends agree, auto picks by measurement, background graph, CUDA."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest

from service.artifact import GRAPH_OUTPUTS, ArtifactError, file_entry, load_manifest, write_manifest
from service.errors import ServiceError
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtimes import RuntimeUnavailable, cuda_available_torch, load_runtime
from tests.conftest import export_tiny_bundle

from .serving import LiveServer, create_app, multipart_files, random_images, settings

pytestmark = pytest.mark.slow


def tiny(root):
    bundle = root / "tiny" / "1"
    return load_manifest(bundle), bundle


def test_onnx_and_torchscript_agree(tiny_models_root):
    manifest, bundle = tiny(tiny_models_root)
    images = random_images(5, seed=31)
    onnx = load_runtime(manifest, bundle, "onnx", "cpu").run(images)
    script = load_runtime(manifest, bundle, "torchscript", "cpu").run(images)
    assert set(onnx) == set(script) == set(GRAPH_OUTPUTS)  # what export writes, latent energy included
    for name in onnx:
        assert onnx[name].dtype == np.float32
        np.testing.assert_allclose(onnx[name], script[name], rtol=1e-4, atol=1e-3)


def test_auto_times_every_backend_and_keeps_the_fastest(tiny_models_root):
    manifest, bundle = tiny(tiny_models_root)
    runtime = load_runtime(manifest, bundle, "auto", "cpu", probe_batch=2)
    assert set(runtime.timings) == {"onnx/cpu", "torchscript/cpu"}
    assert runtime.timings[f"{runtime.backend}/cpu"] == min(runtime.timings.values())


def test_cuda_requested_without_a_gpu_is_refused(tiny_models_root):
    if cuda_available_torch():
        pytest.skip("this machine has CUDA")
    manifest, bundle = tiny(tiny_models_root)
    with pytest.raises(RuntimeUnavailable):
        load_runtime(manifest, bundle, "torchscript", "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_cuda_runtimes_match_cpu(tiny_models_root, backend):
    if not cuda_available_torch():
        pytest.skip("no CUDA device")
    manifest, bundle = tiny(tiny_models_root)
    if backend == "onnx":
        from service.runtimes import cuda_available_onnx

        if not cuda_available_onnx():
            pytest.skip("onnxruntime has no CUDA execution provider here")
    images = random_images(16, seed=32)
    gpu = load_runtime(manifest, bundle, backend, "cuda")
    assert gpu.device == "cuda"
    cpu = load_runtime(manifest, bundle, backend, "cpu").run(images)
    out = gpu.run(images)
    for name in cpu:
        np.testing.assert_allclose(out[name], cpu[name], rtol=1e-3, atol=1e-2)


@pytest.fixture(scope="module")
def background_root(tmp_path_factory, tiny_models_root):
    """tiny/1 plus a background flow (a second tiny flow, other seed) listed in its manifest."""
    root = tmp_path_factory.mktemp("background")
    bundle = root / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle)
    other, _ = export_tiny_bundle(root / "other", "bg", "1", seed=7)
    shutil.copy(other / "model.onnx", bundle / "background.onnx")
    shutil.copy(other / "model.pt", bundle / "background.pt")
    manifest = load_manifest(bundle)
    files = dict(manifest.files)
    files["background_onnx"] = file_entry(bundle, "background.onnx")
    files["background_torchscript"] = file_entry(bundle, "background.pt")
    write_manifest(bundle, manifest.model_copy(update={"files": files}))
    shutil.rmtree(root / "other")
    return root, other.parent.parent


def test_background_graph_feeds_the_likelihood_ratio(background_root, tiny_models_root, tmp_path):
    root, _ = background_root
    manifest, bundle = tiny(root)
    images = random_images(3, seed=33)
    for backend in ("onnx", "torchscript"):
        stats = load_runtime(manifest, bundle, backend, "cpu").run(images)
        assert stats["background_bpd"].shape == (3,)
        assert not np.allclose(stats["background_bpd"], stats["bpd"])
    with LiveServer(create_app(settings(root))) as live:
        body = httpx.post(
            f"{live.url}/score", files=multipart_files(images), params={"score": "likelihood_ratio"}
        ).json()
    expected = load_runtime(manifest, bundle, "onnx", "cpu").run(images)
    for i, result in enumerate(body["results"]):
        ratio = float(expected["bpd"][i]) - float(expected["background_bpd"][i])
        assert result["score"] == "likelihood_ratio"
        assert result["scores"]["likelihood_ratio"] == pytest.approx(ratio, rel=1e-4, abs=1e-4)


def test_repository_filters_skips_broken_bundles_and_needs_a_default(tmp_path, tiny_models_root):
    for name in ("a", "b"):
        shutil.copytree(tiny_models_root / "tiny" / "1", tmp_path / name / "1")
        manifest_path = tmp_path / name / "1" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["name"] = name
        manifest_path.write_text(json.dumps(manifest))
    shutil.copytree(tmp_path / "a" / "1", tmp_path / "a" / "2")
    manifest_path = tmp_path / "a" / "2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = "2"
    manifest_path.write_text(json.dumps(manifest))
    broken = tmp_path / "c" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", broken)
    (broken / "model.onnx").write_bytes(b"tampered")

    repo = ModelRepository(settings(tmp_path), Metrics(process=False))
    repo.load()
    assert repo.names() == ["a", "b"] and repo.versions("a") == ["1", "2"]
    assert "c/1" in repo.errors and "sha256" in repo.errors["c/1"]
    assert repo.get("a").version == "2" and repo.get("a", "1").version == "1" and repo.get("a/1").version == "1"
    with pytest.raises(ServiceError) as no_default:
        repo.get(None)
    assert no_default.value.status == 400
    with pytest.raises(ServiceError) as unknown:
        repo.get("a", "9")
    assert unknown.value.status == 404

    only = ModelRepository(settings(tmp_path, models=["b", "a/1"], default_model="b"), Metrics(process=False))
    only.load()
    assert sorted(only.entries) == [("a", "1"), ("b", "1")] and only.get(None).name == "b"

    with pytest.raises(ArtifactError):
        ModelRepository(settings(tmp_path, models=["zzz"]), Metrics(process=False)).load()


@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_orientation_runtime_adds_the_flipped_bpd_in_one_graph_call(tiny_models_root, backend):
    manifest, bundle = tiny(tiny_models_root)
    images = random_images(4, seed=34)
    flipped = np.ascontiguousarray(images[:, :, ::-1, :])
    plain = load_runtime(manifest, bundle, backend, "cpu")
    assert not plain.orientation and "vflip_bpd" not in plain.run(images)
    runtime = load_runtime(manifest, bundle, backend, "cpu", orientation=True)
    calls = []
    graph = runtime.main
    runtime.main = lambda batch: calls.append(len(batch)) or graph(batch)
    stats = runtime.run(images)
    assert calls == [8]  # the images and their flips go through the graph together
    expected, on_flipped = plain.run(images), plain.run(flipped)
    assert set(stats) == set(expected) | {"vflip_bpd"}
    for name, value in expected.items():
        assert value.shape == stats[name].shape
        np.testing.assert_allclose(stats[name], value, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(stats["vflip_bpd"], on_flipped["bpd"], rtol=1e-5, atol=1e-4)

    # the bundle's calibration decides when nobody overrides it, as in the service
    oriented = manifest.model_copy(update={"calibration": {"orientation": True}})
    assert load_runtime(oriented, bundle, backend, "cpu").orientation
    assert not load_runtime(oriented, bundle, backend, "cpu", orientation=False).orientation
