"""Calibration of a real (tiny) bundle: held-out slice checks, the CLI, and a flow that knows its blob."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from service.artifact import TrainingData, load_manifest, write_manifest
from service.calibration_file import load_detector
from tests.conftest import make_tiny_flow
from training.calibrate import calibrate_bundle, load_holdout, main
from training.data import DatasetError, sha256_array
from training.metrics import auroc
from training.scoring import open_bundle, run_complexity, run_statistics


def blobs(n: int, center: tuple[float, float], rng: np.random.Generator, size: int = 8) -> np.ndarray:
    """Gaussian blobs at ``center`` (jittered) with faint noise: one simple image distribution."""
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, 1, size, size), np.uint8)
    for i in range(n):
        cy, cx = np.add(center, rng.normal(0, 0.3, 2))
        blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.2**2)) + rng.normal(0, 3, (size, size))
        out[i, 0] = np.clip(np.rint(blob + 10), 0, 255).astype(np.uint8)
    return out


@pytest.fixture
def bundle_copy(tmp_path, tiny_models_root):
    bundle = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle)
    return bundle


def test_cli_calibrates_from_an_npz_and_keeps_sha256s_consistent(tmp_path, bundle_copy, capsys):
    holdout = np.random.default_rng(0).integers(0, 256, (120, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "holdout.npz", images=holdout)
    assert main([str(bundle_copy), "--holdout", str(tmp_path / "holdout.npz"), "--no-progress", "--threads", "1"]) == 0
    assert "calibrated" in capsys.readouterr().out
    manifest = load_manifest(bundle_copy, verify=True)
    assert manifest.calibration["n_holdout"] == 120 and manifest.calibration["holdout_sha256"] == sha256_array(holdout)
    assert manifest.calibration["runtime"].startswith("onnx")
    detector = load_detector(manifest, bundle_copy)
    assert detector.fitted and detector.default_score == "dose"

    # recalibrating replaces, never duplicates, and the default score can be chosen
    assert main([str(bundle_copy), "--holdout", str(tmp_path / "holdout.npz"), "--no-progress",
                 "--default-score", "complexity", "--density", "kde"]) == 0  # fmt: skip
    manifest = load_manifest(bundle_copy, verify=True)
    assert manifest.calibration["default_score"] == "complexity"
    assert manifest.calibration["dose"]["density"] == "kde"
    assert sorted(manifest.files) == ["calibration", "onnx", "torchscript", "weights"]


def test_calibration_uses_the_service_runtime_numbers(tmp_path, bundle_copy):
    holdout = np.random.default_rng(1).integers(0, 256, (60, 1, 28, 28), dtype=np.uint8)
    bundle = open_bundle(bundle_copy, threads=1)
    detector = calibrate_bundle(bundle, holdout, fit_fraction=0.5, progress=False)
    stats = run_statistics(bundle, holdout, progress=False)
    np.testing.assert_array_equal(np.sort(stats["bpd"].astype(np.float64)), detector.calibration["bpd"])


def test_holdout_is_read_from_the_manifest_record_and_checked(tmp_path, bundle_copy):
    images = np.random.default_rng(2).integers(0, 256, (100, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", images=images)
    manifest = load_manifest(bundle_copy)
    record = TrainingData(
        source="npz",
        split="train",
        path=str(tmp_path / "train.npz"),
        sha256=sha256_array(images),
        slices={"train": (0, 60), "validation": (60, 70), "holdout": (70, 100)},
        holdout_sha256=sha256_array(images[70:]),
    )
    manifest = manifest.model_copy(update={"data": record})
    write_manifest(bundle_copy, manifest)
    np.testing.assert_array_equal(load_holdout(manifest), images[70:])

    images[80] ^= 1  # the data changed under the model
    np.savez(tmp_path / "train.npz", images=images)
    with pytest.raises(DatasetError, match="not the data the model was trained against"):
        load_holdout(manifest)
    assert main([str(bundle_copy), "--no-progress"]) == 2  # and the CLI says so instead of calibrating


def test_manifest_without_a_holdout_record_is_refused(bundle_copy, capsys):
    assert main([str(bundle_copy), "--no-progress"]) == 2
    assert "--holdout" in capsys.readouterr().err


@pytest.mark.slow
def test_a_flow_fitted_on_one_blob_flags_another(tmp_path):
    """End to end where the answer is known: train a tiny Glow on blobs at one place, export, calibrate,
    and images of a blob elsewhere are flagged while fresh images of the first blob mostly are not."""
    from training.export import export_bundle
    from training.flows import dequantize

    rng = np.random.default_rng(3)
    train, holdout, test = blobs(512, (2.5, 2.5), rng), blobs(300, (2.5, 2.5), rng), blobs(300, (2.5, 2.5), rng)
    ood = blobs(300, (5, 5), rng)
    torch.manual_seed(0)
    flow, config = make_tiny_flow(seed=5, shape=(1, 8, 8))
    flow.train()
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for step in range(150):
        batch = torch.from_numpy(train[(step * 64) % 512 : (step * 64) % 512 + 64])
        log_pz, log_det = flow(dequantize(batch, noise=True))
        loss = -(log_pz.sum(1) + log_det.sum(1)).mean() / 64
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.eval()
    bundle_dir = tmp_path / "blob" / "1"
    # 64 dims amplify float32 rounding in bits per dim, hence the looser parity tolerance
    export_bundle(
        flow, bundle_dir, name="blob", version="1", architecture=config.model_dump(mode="json"), tolerance=1e-3
    )

    bundle = open_bundle(bundle_dir, threads=1)
    detector = calibrate_bundle(bundle, holdout, progress=False)

    def scored(images):
        stats = run_statistics(bundle, images, progress=False)
        return detector.predict(stats, run_complexity(images, progress=False), alpha=0.05)

    fresh, other = scored(test), scored(ood)
    for name in ("bpd", "typicality", "dose"):
        assert auroc(fresh["scores"][name], other["scores"][name]) > 0.95, name
    assert other["is_ood"].mean() > 0.9
    assert fresh["is_ood"].mean() < 0.15


def test_cli_calibrates_with_orientation_and_the_runtime_follows(tmp_path, bundle_copy):
    holdout = np.random.default_rng(4).integers(0, 256, (120, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "holdout.npz", images=holdout)
    base = [str(bundle_copy), "--holdout", str(tmp_path / "holdout.npz"), "--no-progress", "--threads", "1"]
    assert main([*base, "--orientation", "--combined-parts", "dose,complexity,orientation"]) == 0
    manifest = load_manifest(bundle_copy, verify=True)
    assert manifest.calibration["orientation"] is True
    assert manifest.calibration["combined"] == {"parts": ["dose", "complexity", "orientation"], "rule": "max"}

    bundle = open_bundle(bundle_copy, threads=1)  # as oodgate-eval and the service open it
    assert bundle.runtime.orientation
    detector = load_detector(manifest, bundle_copy)
    stats = run_statistics(bundle, holdout, progress=False)
    plain = open_bundle(bundle_copy, threads=1, orientation=False)
    flipped = run_statistics(plain, holdout[:, :, ::-1], progress=False)
    np.testing.assert_allclose(stats["vflip_bpd"], flipped["bpd"], rtol=1e-5, atol=1e-4)
    expected = np.sort(stats["bpd"].astype(np.float64) - stats["vflip_bpd"])
    np.testing.assert_array_equal(detector.calibration["orientation"], expected)

    assert main(base) == 0  # recalibrating without the flag keeps what the bundle had
    assert load_manifest(bundle_copy).calibration["orientation"] is True
    assert main([*base, "--no-orientation"]) == 0
    manifest = load_manifest(bundle_copy, verify=True)
    assert manifest.calibration["orientation"] is False and "orientation" not in manifest.calibration["scores"]
    assert not open_bundle(bundle_copy, threads=1).runtime.orientation
    assert main([*base, "--combined-parts", "dose,orientation"]) == 2  # no flipped pass, no orientation part
    assert main([*base, "--combined-rule", "sum"]) == 0
    assert load_manifest(bundle_copy, verify=True).calibration["combined"]["rule"] == "sum"
