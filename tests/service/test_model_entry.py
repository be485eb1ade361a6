"""One served model version built from a calibrated bundle: its worker, queue, pipeline and ``GET /models`` entry."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from service.artifact import OUTPUT_NAMES, load_manifest
from service.calibration_file import load_detector
from service.complexity import complexity_bits
from service.metrics import Metrics
from service.model_entry import build_entry, default_runtime_factory, files_signature
from service.runtimes import load_runtime

from .serving import random_images, settings


def test_an_entry_serves_its_bundle_through_its_pipeline(calibrated_models_root):
    bundle = calibrated_models_root / "tiny" / "1"
    manifest = load_manifest(bundle)
    detector = load_detector(manifest, bundle)
    s = settings(calibrated_models_root, max_batch_size=4, max_queue_images=16, max_images_per_request=16)
    entry = build_entry(manifest, bundle, detector, s, Metrics(process=False), default_runtime_factory)
    assert entry.batcher is entry.worker.batcher and entry.backend is None and not entry.ready  # not started
    entry.worker.start()
    try:
        assert entry.worker.wait_loaded(30) and entry.ready and entry.load_error is None
        assert entry.backend == "onnx" and entry.info()["backend"] == "onnx" and entry.info()["ready"]
        images = random_images(6, seed=3)
        out = asyncio.run(entry.batcher.submit(images, time.monotonic() + 30))
    finally:
        entry.worker.stop(5)
    # the same numbers as the runtime and the detector give by hand: forward, then post-process
    stats = load_runtime(manifest, bundle, backend="onnx", device="cpu").run(images)
    scores = detector.score(stats, complexity_bits(images))
    assert out.failures == {} and list(out.result.outputs) == list(OUTPUT_NAMES)
    np.testing.assert_allclose(out.result.bpd, stats["bpd"], rtol=1e-5)
    assert list(out.result.scores) == list(detector.score_names)
    for name, p_values in detector.p_values(scores).items():
        np.testing.assert_allclose(out.result.p_values[name], p_values, rtol=1e-5)


def test_files_signature_changes_when_a_listed_file_does(tmp_path, tiny_models_root):
    import shutil

    bundle = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle)
    manifest = load_manifest(bundle)
    before = files_signature(bundle, manifest)
    assert files_signature(bundle, manifest) == before
    graph = bundle / manifest.files["onnx"].path
    graph.write_bytes(graph.read_bytes() + b"\0")
    assert files_signature(bundle, manifest) != before
