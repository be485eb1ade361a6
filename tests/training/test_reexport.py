"""Re-export: a bundle whose graph predates an output gets it from its own weights, and nothing it showed moves."""

import hashlib
import json
import shutil

import numpy as np
import onnxruntime as ort
import torch

from service.artifact import GRAPH_OUTPUTS, OUTPUT_NAMES, load_manifest
from service.calibration_file import load_detector
from service.runtimes import load_runtime
from tests.service.serving import calibrated_root
from training.export import ScoringGraph
from training.reexport import main
from training.weights import flow_from_bundle


def _as_old_export(bundle, monkeypatch):
    """The bundle as an export before latent energy wrote it: a six-output graph and a manifest saying so."""
    import training.export as export

    six = ScoringGraph.forward

    def forward(self, images):
        return six(self, images)[: len(OUTPUT_NAMES)]

    with monkeypatch.context() as patch:
        patch.setattr(export.ScoringGraph, "forward", forward)
        patch.setattr(export, "GRAPH_OUTPUTS", OUTPUT_NAMES)
        graph = export.prepare_for_export(flow_from_bundle(bundle))
        example = torch.randint(0, 256, (2, *load_manifest(bundle).input.shape), dtype=torch.uint8)
        export.export_torchscript(graph, example, bundle / "model.pt")
        export.export_onnx(graph, example, bundle / "model.onnx")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["outputs"] = list(OUTPUT_NAMES)
    for key, file in (("onnx", "model.onnx"), ("torchscript", "model.pt")):
        manifest["files"][key]["sha256"] = hashlib.sha256((bundle / file).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_reexport_adds_latent_energy_and_keeps_every_shown_output(tmp_path, tiny_models_root, monkeypatch):
    bundle = calibrated_root(tmp_path / "models", tiny_models_root) / "tiny" / "1"
    _as_old_export(bundle, monkeypatch)
    old = load_manifest(bundle)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    images = np.random.default_rng(5).integers(0, 256, (6, *old.input.shape), dtype=np.uint8)
    before = load_runtime(old, bundle, "onnx", "cpu").run(images)
    p_before = load_detector(old, bundle).calibration

    assert main([str(bundle)]) == 0
    new = load_manifest(bundle)  # the new graphs' sha256 are recorded
    assert new.outputs == list(GRAPH_OUTPUTS) and new.calibration == old.calibration
    for backend in ("onnx", "torchscript"):
        after = load_runtime(new, bundle, backend, "cpu").run(images)
        assert set(after) == set(GRAPH_OUTPUTS)
        for name in OUTPUT_NAMES:
            np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-3)
    assert load_detector(new, bundle).calibration.keys() == p_before.keys()


def test_reexport_refuses_a_bundle_without_weights(tmp_path, tiny_models_root, capsys):
    bundle = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["weights"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(bundle)]) == 2
    assert "weights.npz" in capsys.readouterr().err
