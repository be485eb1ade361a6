"""oodgate-build: a folder of images in, a served and calibrated gate out; re-running resumes."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from tests.service.serving import LiveServer, png, settings
from training.build import build, main
from training.build_plan import BuildOptions

pytestmark = pytest.mark.slow


def colour_folder(root, n: int = 360, size: int = 16, seed: int = 0):
    """Smooth colour blobs in three class subfolders (sorted by class, as users store them)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(40, 216, 3)
        image = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def general_mix(path, n: int = 600, size: int = 16, seed: int = 3):
    """Images "in general" for the background flow: pixel noise, noise blurred by a 2x upscale, flat colours."""
    rng = np.random.default_rng(seed)
    third = n // 3
    noise = rng.integers(0, 256, (third, 3, size, size))
    blurred = rng.integers(0, 256, (third, 3, size // 2, size // 2)).repeat(2, axis=2).repeat(2, axis=3)
    flats = np.repeat(rng.integers(0, 256, (n - 2 * third, 3, 1, 1)), size, axis=2).repeat(size, axis=3)
    np.savez(path, images=np.concatenate([noise, blurred, flats]).astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    images = colour_folder(tmp / "images")
    test = colour_folder(tmp / "test", n=60, seed=1)
    options = BuildOptions(
        images=str(images),
        name="tiny-rgb",
        test=str(test),
        general=str(general_mix(tmp / "general.npz")),
        minutes=0.4,
        models_root=str(tmp / "models"),
        runs_root=str(tmp / "runs"),
        preset="tiny",
        threads=1,
        progress=False,
    )
    return options, build(options)


def test_a_folder_of_rgb_images_builds_a_calibrated_rgb_bundle_with_its_report(built):
    options, bundle_dir = built
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [3, 16, 16] and manifest["input"]["color_mode"] == "RGB"
    assert manifest["data"]["source"] == "folder" and manifest["data"]["slice_seed"] == 0
    assert manifest["data"]["test_sha256"] and np.isfinite(manifest["metrics"]["test_bpd"])
    calibration = manifest["calibration"]
    assert calibration["default_score"] in calibration["scores"]
    # the graph outputs each level's latent energy and dose reads it: a build gets it by default
    assert manifest["outputs"][-1] == "latent_energy_levels" and calibration["latent_energy"] is True
    assert calibration["dose"]["features"][-3:] == [f"latent_energy_level{i}" for i in (1, 2, 3)]
    assert (bundle_dir / "report" / "README.md").exists()
    config = (options.run_dir / "config.yaml").read_text()
    assert "levels: 3" in config and "hidden: 16" in config  # 16x16 squeezes three times


def test_a_build_trains_a_general_domain_background_and_keeps_it_only_if_the_rule_prefers_it(built):
    options, bundle_dir = built
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    calibration = manifest["calibration"]
    choice = json.loads((options.run_dir / "background" / "choice.json").read_text())
    assert choice["choice"] in ("with background", "without background")
    assert choice["best"].startswith(choice["choice"])  # the rule's best score belongs to the kept calibration
    kept = choice["choice"] == "with background"
    assert ({"background_onnx", "background_torchscript"} <= set(manifest["files"])) == kept
    assert ("likelihood_ratio" in calibration["scores"]) == kept
    if kept:
        assert manifest["training"]["background"]["kind"] == "general-domain"
        assert calibration["combined"] == {"parts": ["dose", "likelihood_ratio"], "rule": "sum"}
    else:
        assert not (bundle_dir / "background.onnx").exists() and "background" not in manifest["training"]
    report = (bundle_dir / "report" / "README.md").read_text()
    line = next(line for line in report.splitlines() if line.startswith("- default score of the bundle"))
    assert line.count(f"**`{calibration['default_score']}`**") == 2  # the bundle's default is the rule's choice
    # the background trained on the mix: same architecture as the model, no mutation
    background = (options.run_dir / "background" / "config.yaml").read_text()
    assert "hidden: 16" in background and "mutation_rate: 0.0" in background


def test_the_built_bundle_is_served_with_no_further_step(built):
    options, bundle_dir = built
    app = create_app(settings(bundle_dir.parents[1]))
    rng = np.random.default_rng(5)
    image = np.clip(rng.integers(40, 216, 3)[:, None, None] + rng.normal(0, 12, (3, 16, 16)), 0, 255).astype(np.uint8)
    with LiveServer(app) as server:
        response = httpx.post(f"{server.url}/score", files=[("files", ("a.png", png(image), "image/png"))])
        meta = httpx.get(f"{server.url}/v2/models/tiny-rgb").json()
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert np.isfinite(result["bpd"]) and 0 < result["p_value"] <= 1 and isinstance(result["ood"], bool)
    assert meta["inputs"][0]["shape"] == [-1, 16, 16, 3]  # v2 is NHWC: the RGB input shows


def test_rerunning_resumes_and_redoes_nothing(built, capsys):
    options, bundle_dir = built
    before = (bundle_dir / "manifest.json").stat().st_mtime
    build(options)
    assert (bundle_dir / "manifest.json").stat().st_mtime == before
    err = capsys.readouterr().err
    assert "train: done earlier" in err and "background: done earlier" in err
    assert "export: " in err and "is current" in err
    assert "evaluate: " in err and "report is current" in err


def test_mixed_sizes_are_refused_with_a_clear_error(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "b.png")
    assert main([str(tmp_path), "--name", "x", "--runs-root", str(tmp_path / "runs")]) == 2
    assert "--size" in capsys.readouterr().err


def test_a_gray_folder_without_a_test_set_gets_a_gray_model_and_a_cut_test_set(tmp_path):
    rng = np.random.default_rng(7)
    folder = tmp_path / "gray"
    folder.mkdir()
    for i in range(300):
        Image.fromarray(np.clip(rng.normal(128, 30, (16, 16)), 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    options = BuildOptions(
        images=str(folder),
        name="tiny-gray",
        general="none",
        minutes=0.2,
        models_root=str(tmp_path / "models"),
        runs_root=str(tmp_path / "runs"),
        preset="tiny",
        threads=1,
        progress=False,
    )
    manifest = json.loads((build(options) / "manifest.json").read_text())
    assert manifest["input"]["shape"] == [1, 16, 16] and manifest["input"]["color_mode"] == "L"
    data = manifest["data"]
    assert data["test_every"] == 10 and data["test_sha256"]
    assert data["slices"]["holdout"][1] == 270  # 300 images less the 30 of the test set
    assert "every 10th image" in (options.bundle_dir / "report" / "README.md").read_text()
