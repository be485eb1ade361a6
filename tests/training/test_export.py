"""Export writes a bundle that scores like the eager model, or no manifest at all."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.artifact import GRAPH_OUTPUTS, OUTPUT_NAMES, ArtifactError, load_manifest
from tests.conftest import RGB8, make_tiny_flow
from training.data import sha256_array
from training.export import (
    BundleExists,
    ExportParityError,
    check_parity,
    export_bundle,
    export_checkpoint,
    main,
    prepare_for_export,
)


def test_tiny_export_passes_parity_and_records_manifest(tiny_models_root):
    bundle = tiny_models_root / "tiny" / "1"
    manifest = load_manifest(bundle)  # verifies every file's sha256
    assert manifest.input.shape == (1, 28, 28)
    assert manifest.outputs == list(GRAPH_OUTPUTS) and GRAPH_OUTPUTS[: len(OUTPUT_NAMES)] == OUTPUT_NAMES
    parity = manifest.training["export_parity"]
    assert parity["onnx_max_abs_delta_bpd"] <= 1e-4
    assert parity["torchscript_max_abs_delta_bpd"] <= 1e-4
    assert {"torch", "onnxruntime", "numpy"} <= set(manifest.packages)


def test_onnx_graph_takes_uint8_with_dynamic_batch_and_named_outputs(tiny_models_root):
    session = ort.InferenceSession(str(tiny_models_root / "tiny/1/model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(uint8)"
    assert [o.name for o in session.get_outputs()] == list(GRAPH_OUTPUTS)
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    out = dict(zip(GRAPH_OUTPUTS, session.run(None, {"images": images}), strict=True))
    assert out["log_pz_levels"].shape == (5, 2) and out["bpd"].shape == (5,)
    assert out["latent_energy_levels"].shape == (5, 2) and np.all(out["latent_energy_levels"] >= 0)
    np.testing.assert_allclose(out["log_px"], out["log_pz"] + out["log_det"], rtol=1e-5)
    np.testing.assert_allclose(out["log_pz"], out["log_pz_levels"].sum(1), rtol=1e-5)
    np.testing.assert_allclose(out["log_det"], out["log_det_levels"].sum(1), rtol=1e-5, atol=1e-3)
    expected_bpd = (-out["log_px"].astype(np.float64) + 784 * np.log(256)) / (784 * np.log(2))
    np.testing.assert_allclose(out["bpd"], expected_bpd, rtol=1e-5)
    # deterministic: the same image always gets the same numbers
    again = session.run(["bpd"], {"images": images})[0]
    np.testing.assert_array_equal(again, out["bpd"])


def test_torchscript_matches_onnx_on_one_image(tiny_models_root):
    module = torch.jit.load(str(tiny_models_root / "tiny/1/model.pt"))
    session = ort.InferenceSession(str(tiny_models_root / "tiny/1/model.onnx"), providers=["CPUExecutionProvider"])
    image = np.full((1, 1, 28, 28), 17, np.uint8)
    ts_bpd = module(torch.from_numpy(image))[3].numpy()
    onnx_bpd = session.run(["bpd"], {"images": image})[0]
    np.testing.assert_allclose(ts_bpd, onnx_bpd, atol=1e-4)


def test_parity_check_fails_loudly_and_writes_no_manifest(tmp_path, tiny_models_root):
    flow, config = make_tiny_flow(seed=3)
    graph = prepare_for_export(flow)
    with torch.no_grad():  # the bundle on disk belongs to another model: parity must fail
        graph.flow.top_prior.mean.add_(1.0)
    with pytest.raises(ExportParityError, match="bpd"):
        check_parity(graph, tiny_models_root / "tiny" / "1", np.zeros((4, 1, 28, 28), np.uint8))


def test_export_refuses_to_leave_a_manifest_when_parity_fails(tmp_path, monkeypatch):
    flow, config = make_tiny_flow(seed=4)

    def broken(graph, bundle_dir, images, tolerance):
        raise ExportParityError("forced")

    monkeypatch.setattr("training.export.check_parity", broken)
    with pytest.raises(ExportParityError):
        export_bundle(flow, tmp_path / "b" / "1", name="b", version="1", architecture={})
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_manifest(tmp_path / "b" / "1")


def test_tampered_bundle_is_rejected(tmp_path, tiny_models_root):
    import shutil

    bundle = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle)
    with open(bundle / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        load_manifest(bundle)


def test_saturated_coupling_scale_exports_a_finite_log_det(tmp_path):
    """Regression: the ONNX exporter turned ``logsigmoid`` into ``Log(Sigmoid(x))``, which is ``-inf``
    in float32 once a coupling's scale saturates (a flipped FashionMNIST image did it to the default model)."""
    from training.export import export_onnx, run_eager, run_onnx
    from training.flows.coupling import Coupling

    flow, _ = make_tiny_flow(seed=5)
    coupling = next(m for m in flow.modules() if isinstance(m, Coupling) and not m.additive)
    with torch.no_grad():  # the st-net's raw-scale half: sigmoid(-148) underflows float32
        half = coupling.net.last.bias.shape[0] // 2
        coupling.net.last.bias[half:] = -150.0
    graph = prepare_for_export(flow)
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    export_onnx(graph, torch.from_numpy(images), tmp_path / "model.onnx")
    eager = dict(zip(GRAPH_OUTPUTS, run_eager(graph, images), strict=True))
    onnx = dict(zip(GRAPH_OUTPUTS, run_onnx(tmp_path / "model.onnx", images), strict=True))
    assert np.all(np.isfinite(eager["log_det"])) and np.all(eager["log_det"] < -1e4)  # the scale did saturate
    assert np.all(np.isfinite(onnx["log_det"]))
    np.testing.assert_allclose(onnx["log_det"], eager["log_det"], rtol=1e-5)


def rgb_checkpoint(tmp_path):
    """An oodgate-train checkpoint of a tiny 8x8 RGB flow trained on (recorded) .npz data."""
    from tests.training.recorded import blobs
    from training.config import RunConfig

    flow, config = make_tiny_flow(seed=5, shape=RGB8)
    np.savez(tmp_path / "train.npz", images=blobs(60, RGB8, seed=0))
    np.savez(tmp_path / "test.npz", images=blobs(30, RGB8, seed=1))
    data = {"source": "npz", "path": str(tmp_path / "train.npz"), "slices": {"validation": 10, "holdout": 20}}
    run = RunConfig(name="rgb", model=config, data=data)
    path = tmp_path / "rgb.pt"
    state = {"model": flow.state_dict(), "config": run.model_dump(mode="json"), "input_shape": list(RGB8)}
    torch.save({**state, "step": 3, "best_val_bpd": 8.0}, path)
    return path, flow


def test_export_checkpoint_measures_and_records_the_users_test_set(tmp_path, capsys):
    from training.objective import evaluate_bpd

    checkpoint, flow = rgb_checkpoint(tmp_path)
    test = str(tmp_path / "test.npz")
    manifest = export_checkpoint(checkpoint, tmp_path / "models", test=test)
    expected = evaluate_bpd(flow, np.load(test)["images"], torch.device("cpu"))
    assert manifest.metrics["test_bpd"] == pytest.approx(expected, rel=1e-9)
    data = load_manifest(tmp_path / "models" / "rgb" / "1").data
    assert (data.test_source, data.test_path, data.slices["holdout"]) == ("npz", test, (40, 60))
    assert data.test_sha256 == sha256_array(np.load(test)["images"])

    with pytest.raises(BundleExists):
        export_checkpoint(checkpoint, tmp_path / "models")
    # no --test and none in the config: exported, saying there is no test bpd
    code = main([str(checkpoint), "--models-dir", str(tmp_path / "models"), "--force"])
    assert code == 0 and "no in-distribution test set (pass --test" in capsys.readouterr().err
    assert "test_bpd" not in load_manifest(tmp_path / "models" / "rgb" / "1").metrics
    # an explicit test set that cannot be read is an error, not a silent skip
    assert main([str(checkpoint), "--models-dir", str(tmp_path / "m2"), "--test", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "m2").exists()
