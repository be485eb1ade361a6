"""The service returns, image for image, the scores, p-values and flags that ``oodgate-eval`` measures."""

from __future__ import annotations

import csv
import gzip
import shutil

import httpx
import numpy as np
import pytest

from service.artifact import load_manifest
from service.calibration_file import load_detector
from training.calibrate import calibrate_bundle
from training.evaluate import main as eval_main
from training.scoring import open_bundle

from .serving import LiveServer, create_app, multipart_files, npy, random_images, settings, smooth_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "orientation"])
def calibrated(request, tmp_path_factory, tiny_models_root):
    """A calibrated copy of the tiny bundle; with ``orientation`` its runtime also scores flipped images."""
    root = tmp_path_factory.mktemp("parity")
    shutil.copytree(tiny_models_root / "tiny" / "1", root / "tiny" / "1")
    calibrate_bundle(
        open_bundle(root / "tiny" / "1", threads=1, orientation=request.param),
        smooth_images(300, seed=1),
        orientation=request.param,
        combined_parts=("dose", "complexity", "orientation") if request.param else None,
        progress=False,
    )
    return root


def test_service_flags_equal_eval_flags(tmp_path, calibrated):
    images = np.concatenate([smooth_images(12, seed=2), random_images(6, seed=3)])
    np.savez(tmp_path / "probe.npz", images=images)
    np.savez(tmp_path / "in.npz", images=smooth_images(40, seed=4))
    argv = [
        str(calibrated / "tiny" / "1"),
        "--in-dist", str(tmp_path / "in.npz"),
        "--sets", "",
        "--add", f"probe={tmp_path / 'probe.npz'}",
        "--out", str(tmp_path / "report"),
        "--no-progress", "--no-plots", "--threads", "1",
    ]  # fmt: skip
    assert eval_main(argv) == 0
    with gzip.open(tmp_path / "report" / "scores.csv.gz", "rt") as handle:
        rows = [r for r in csv.DictReader(handle) if r["set"] == "probe"]
    assert len(rows) == len(images)
    detector = load_detector(load_manifest(calibrated / "tiny" / "1"), calibrated / "tiny" / "1")
    names = detector.score_names
    assert ("orientation" in names) == detector.orientation and "combined" in names
    assert all(f"score_{name}" in rows[0] for name in names)  # the report has every score, the new ones too

    app = create_app(settings(calibrated, max_batch_size=5))
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        info = client.get("/models").json()["models"][0]
        assert info["calibration"]["orientation"] == detector.orientation
        assert info["scores"] == list(names)
        for score in names:
            for alpha in (0.05, 0.3):
                response = client.post("/score", files=multipart_files(images), params={"alpha": alpha, "score": score})
                assert response.status_code == 200, response.text
                results = response.json()["results"]
                for row, result in zip(rows, results, strict=True):
                    p_eval = float(row[f"p_{score}"])
                    assert result["score"] == score
                    assert result["p_value"] == pytest.approx(p_eval, rel=1e-5)
                    assert result["ood"] == (p_eval <= alpha)
                    for name, value in result["scores"].items():
                        assert value == pytest.approx(float(row[f"score_{name}"]), rel=1e-4, abs=1e-4)
        # a raw uint8 array body gives the same flags as the PNG parts
        tensor = client.post("/score", content=npy(images[:, 0]), headers={"content-type": "application/x-npy"})
        assert tensor.status_code == 200, tensor.text
        assert [r["ood"] for r in tensor.json()["results"]] == [float(r["p_dose"]) <= 0.05 for r in rows]
