"""The likelihood-ratio score's background flow: mutation, training, attaching to a bundle, scoring."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.artifact import load_manifest
from service.calibration_file import load_detector
from tests.conftest import make_tiny_flow
from tests.training.tiny_runs import blob_slices, tiny_config
from training.background import (
    BackgroundRunConfig,
    BackgroundTrainer,
    attach_background,
    background_from_checkpoint,
    detach_background,
    perturb,
)
from training.calibrate import calibrate_bundle
from training.scoring import open_bundle, run_statistics


def test_perturb_replaces_the_requested_share_of_pixels():
    pixels = torch.full((64, 1, 28, 28), 7, dtype=torch.uint8)
    assert torch.equal(perturb(pixels, 0.0, np.random.default_rng(0)), pixels)
    mutated = perturb(pixels, 0.15, np.random.default_rng(0))
    changed = (mutated != pixels).float().mean().item()
    assert 0.13 < changed < 0.16  # 1/256 of the draws land on 7 again
    all_noise = perturb(pixels, 1.0, np.random.default_rng(1)).numpy()
    assert abs(all_noise.mean() - 127.5) < 2 and pixels.max() == 7  # the input is not modified in place


def test_background_trainer_trains_on_mutated_batches_and_checkpoints_its_config(tmp_path):
    config = BackgroundRunConfig.model_validate(
        {**tiny_config(tmp_path).model_dump(), "background": {"mutation_rate": 0.3, "weight_decay": 1e-3}}
    )
    trainer = BackgroundTrainer(config, blob_slices())
    clean = next(iter(super(BackgroundTrainer, trainer)._batches(0)))
    mutated = next(iter(trainer._batches(0)))
    assert torch.equal(mutated, next(iter(trainer._batches(0))))  # seeded: a resumed run sees the same noise
    assert 0.2 < (mutated != clean).float().mean().item() < 0.4
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 1e-3
    trainer.fit()
    flow, loaded, checkpoint = background_from_checkpoint(tmp_path / "run" / "best.pt")
    assert loaded.background.mutation_rate == 0.3 and flow.dims == 64 and checkpoint["step"] == 8


@pytest.mark.slow
def test_attached_background_gives_the_likelihood_ratio_score(tmp_path, tiny_models_root):
    bundle_dir = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle_dir)
    holdout = np.random.default_rng(0).integers(0, 256, (80, 1, 28, 28), dtype=np.uint8)
    calibrate_bundle(open_bundle(bundle_dir, threads=1), holdout, progress=False)  # to be dropped

    background, _ = make_tiny_flow(seed=1)
    attach_background(background, bundle_dir, {"mutation_rate": 0.15})
    manifest = load_manifest(bundle_dir, verify=True)
    assert {"background_onnx", "background_torchscript"} <= set(manifest.files)
    assert manifest.calibration is None and "calibration" not in manifest.files  # stale: scores changed
    assert manifest.training["background"]["export_parity"]["onnx_max_abs_delta_bpd"] <= 1e-4
    assert not load_detector(manifest, bundle_dir).fitted

    bundle = open_bundle(bundle_dir, threads=1)
    detector = calibrate_bundle(bundle, holdout, progress=False)
    assert detector.needs_background and "likelihood_ratio" in detector.score_names
    images = holdout[:5]
    stats = run_statistics(bundle, images, progress=False)
    session = ort.InferenceSession(str(bundle_dir / "background.onnx"), providers=["CPUExecutionProvider"])
    direct = session.run(["bpd"], {"images": images})[0]
    np.testing.assert_allclose(stats["background_bpd"], direct, rtol=1e-6)
    ratio = detector.score(stats, np.zeros(5) + 784 * 8, ["likelihood_ratio"])["likelihood_ratio"]
    np.testing.assert_allclose(ratio, stats["bpd"].astype(np.float64) - direct.astype(np.float64), rtol=1e-6)
    assert load_detector(load_manifest(bundle_dir), bundle_dir).background

    detach_background(bundle_dir)  # what a build does when the domain-free rule prefers the bundle without it
    manifest = load_manifest(bundle_dir, verify=True)
    assert not {"background_onnx", "background_torchscript", "calibration"} & set(manifest.files)
    assert "background" not in manifest.training and manifest.calibration is None
    assert not (bundle_dir / "background.onnx").exists() and not (bundle_dir / "background.pt").exists()
    assert not load_detector(manifest, bundle_dir).background


def test_attach_refuses_a_flow_of_another_shape(tmp_path, tiny_models_root):
    bundle_dir = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle_dir)
    flow, _ = make_tiny_flow(seed=2, shape=(1, 8, 8))
    with pytest.raises(ValueError, match="background flow takes"):
        attach_background(flow, bundle_dir)


def test_background_trainer_follows_the_ordinary_schedule_with_its_decay(tmp_path):
    base = tiny_config(tmp_path).model_dump()
    base["train"] = {**base["train"], "warmup_steps": 2, "decay_start": 4, "max_steps": 8}
    config = BackgroundRunConfig.model_validate({**base, "background": {"mutation_rate": 0.0}})
    trainer = BackgroundTrainer(config, blob_slices())
    lr = config.train.lr
    factors = [trainer.scheduler.lr_lambdas[0](step) for step in (0, 1, 4, 6, 8)]
    assert factors == [0.5, 1.0, 1.0, 0.5, 0.0]  # warm-up, constant, linear decay to 0 at the last step
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr * 0.5)  # step 0 of the warm-up


def test_attach_with_its_arguments_swapped_says_so_instead_of_a_traceback(tmp_path, tiny_models_root, capsys):
    from training.background import main

    checkpoint = tmp_path / "bg.pt"
    checkpoint.write_bytes(b"")
    assert main(["attach", str(tiny_models_root / "tiny" / "1"), str(checkpoint)]) == 2
    assert "expected a checkpoint file, then a bundle directory" in capsys.readouterr().err
