"""``python -m training.guarantees`` end to end: the report, the parity check, the OOD set it mixes in."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from service.artifact import load_manifest
from service.calibration_file import load_detector
from training.calibrate import calibrate_bundle
from training.guarantee_experiments import NULL_FIXED, NULL_REDRAWN
from training.guarantees import calibration_parity, main, ood_set
from training.scoring import open_bundle

from .synthetic import fashion_like


@pytest.fixture
def calibrated(tmp_path, tiny_models_root):
    bundle_dir = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle_dir)
    holdout = fashion_like(200, 4)
    calibrate_bundle(open_bundle(bundle_dir, threads=1), holdout, progress=False)
    np.savez(tmp_path / "holdout.npz", images=holdout)
    np.savez(tmp_path / "test.npz", images=fashion_like(300, 5))
    return bundle_dir


def test_the_command_writes_the_report(tmp_path, calibrated):
    out, cache = tmp_path / "report", tmp_path / "cache"
    argv = [
        str(calibrated),
        "--in-dist", str(tmp_path / "test.npz"),
        "--holdout", str(tmp_path / "holdout.npz"),
        "--ood-set", "noise",
        "--out", str(out),
        "--cache", str(cache),
        "--fdr-batches", "20", "--fdr-batch-size", "50",
        "--splits", "20",
        "--drift-streams", "3", "--drift-length", "300", "--drift-prefix", "100",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "guarantees.json").read_text())
    assert summary["parity"] <= 1e-4 and summary["n_in"] == 300 and summary["n_ood"] == 1000
    assert [row["q"] for row in summary["fdr"]] == [0.05, 0.1, 0.2]
    assert [row["stream"] for row in summary["drift"]][:2] == [NULL_FIXED, NULL_REDRAWN]
    text = (out / "guarantees.md").read_text()
    assert "python -m training.guarantees " + str(calibrated) in text and "## Targets" in text
    assert len(list(cache.glob("*.npz"))) == 3
    assert main(argv) == 0  # from the cache: the same figures
    again = json.loads((out / "guarantees.json").read_text())
    assert again["fdr"] == summary["fdr"] and again["drift"] == summary["drift"]


def test_parity_catches_a_calibration_that_is_not_the_holdouts(calibrated, tmp_path):
    detector = load_detector(load_manifest(calibrated), calibrated)
    holdout = np.load(tmp_path / "holdout.npz")["images"]
    bundle = open_bundle(calibrated, threads=1)
    from training.guarantees import score_images

    scores = score_images(bundle, detector, holdout, "holdout", None)
    assert calibration_parity(detector, scores) <= 1e-4
    assert calibration_parity(detector, scores + 0.01) > 1e-3


def test_ood_set_reads_name_equals_path_or_a_builtin(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", images=images)
    mine = ood_set(f"mine={tmp_path / 'mine.npz'}", (1, 28, 28), images, seed=0)
    assert mine.name == "mine" and mine.kind == "ood"
    np.testing.assert_array_equal(mine.images, images)
    assert ood_set("noise", (1, 28, 28), images, seed=0).name == "noise"
    with pytest.raises(SystemExit, match="not a built-in set"):
        ood_set("no-such-set", (1, 28, 28), images, seed=0)
    with pytest.raises(SystemExit, match="NAME=PATH"):
        ood_set("=nowhere.npz", (1, 28, 28), images, seed=0)
