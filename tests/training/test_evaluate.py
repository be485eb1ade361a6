"""oodgate-eval end to end on tiny calibrated bundles: the report, latent_zeroed's flow, any domain, refusals."""

from __future__ import annotations

import csv
import gzip
import json
import shutil

import numpy as np
import pytest
import torch

from service.artifact import load_manifest, write_manifest
from service.calibration_file import load_detector
from tests.conftest import GRAY8, RGB8, make_tiny_flow
from tests.training.recorded import recorded_bundle
from training.calibrate import calibrate_bundle
from training.config import RunConfig
from training.evaluate import EvalOptions, SetNameError, evaluate_bundle, main
from training.ood_sets import DOMAIN_FREE_OOD, default_sets
from training.scoring import open_bundle, run_statistics

from .synthetic import SHAPE, fashion_like


def write_checkpoint(path, seed=0):
    """A checkpoint in oodgate-train's format for the same weights as the session's tiny bundle."""
    flow, config = make_tiny_flow(seed)
    run = RunConfig(name="tiny", model=config)
    torch.save({"model": flow.state_dict(), "config": run.model_dump(mode="json"), "input_shape": list(SHAPE)}, path)


@pytest.fixture
def calibrated_bundle(tmp_path, tiny_models_root):
    bundle_dir = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_models_root / "tiny" / "1", bundle_dir)
    calibrate_bundle(open_bundle(bundle_dir, threads=1), fashion_like(200, 4), progress=False)
    return bundle_dir


def test_eval_cli_writes_the_report(tmp_path, calibrated_bundle, capsys):
    from PIL import Image

    np.savez(tmp_path / "test.npz", images=fashion_like(150, 5))
    np.savez(tmp_path / "extra.npz", images=np.full((7, 28, 28), 30, np.uint8))
    folder = tmp_path / "invariant"
    folder.mkdir()
    for i, image in enumerate(fashion_like(3, 6)):
        Image.fromarray(image[0]).save(folder / f"{i}.png")
    write_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "report"
    argv = [
        str(calibrated_bundle),
        "--in-dist", str(tmp_path / "test.npz"),
        "--sets", "constant,noise,vflip,latent_zeroed,shift1",
        "--add", f"extra={tmp_path / 'extra.npz'}",
        "--add-invariant", f"mine={folder}",
        "--checkpoint", str(tmp_path / "tiny.pt"),
        "--per-set", "20",
        "--out", str(out),
        "--no-progress",
        "--threads", "1",
        "--set-default",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "recommended default score" in capsys.readouterr().out

    readme = (out / "README.md").read_text()
    assert "oodgate-eval " + str(calibrated_bundle) in readme and "## Targets" in readme
    assert "negative training: none; every OOD set is unseen in kind" in readme
    for name in ("examples.png", "metrics.csv", "metrics.json", "scores.csv.gz", "hist_bpd.png", "hist_dose.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["meets_targets"]) <= set(
        load_detector(load_manifest(calibrated_bundle), calibrated_bundle).score_names
    )
    if summary["meets_targets"]:  # the tiny bundle may meet none; then every score competed
        assert summary["recommended"] in summary["meets_targets"]
    sets = {row["set"] for row in summary["rows"]}
    assert sets == {"in-distribution", "constant", "noise", "vflip", "latent_zeroed", "shift1", "extra", "mine"}
    notes = " ".join(summary.get("notes", []))
    assert "skipped" not in notes and f"from checkpoint {tmp_path / 'tiny.pt'}" in notes
    with gzip.open(out / "scores.csv.gz", "rt") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 150 + 256 + 20 + 20 + 20 + 20 + 7 + 3
    assert {"score_dose", "p_dose", "complexity_bpd"} <= set(rows[0])

    # --set-default wrote the recommendation into the bundle, sha256s still consistent
    manifest = load_manifest(calibrated_bundle, verify=True)
    assert manifest.calibration["default_score"] == summary["recommended"]
    assert load_detector(manifest, calibrated_bundle).default_score == summary["recommended"]


def test_eval_inverts_the_bundles_own_weights_without_a_checkpoint(tmp_path, calibrated_bundle):
    np.savez(tmp_path / "test.npz", images=fashion_like(60, 8))
    out = tmp_path / "report"
    argv = [str(calibrated_bundle), "--in-dist", str(tmp_path / "test.npz"), "--sets", "latent_zeroed",
            "--per-set", "10", "--out", str(out), "--no-progress", "--no-plots", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert {row["set"] for row in summary["rows"]} == {"in-distribution", "latent_zeroed"}
    assert any("weights.npz" in note for note in summary["notes"])


def test_eval_says_why_latent_zeroed_is_missing_when_the_bundle_has_no_weights(tmp_path, calibrated_bundle):
    manifest = load_manifest(calibrated_bundle)
    del manifest.files["weights"]
    write_manifest(calibrated_bundle, manifest)
    (calibrated_bundle / "weights.npz").unlink()
    np.savez(tmp_path / "test.npz", images=fashion_like(60, 8))
    argv = [str(calibrated_bundle), "--in-dist", str(tmp_path / "test.npz"), "--sets", "constant,latent_zeroed",
            "--out", str(tmp_path / "report"), "--no-progress", "--no-plots", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert "latent_zeroed" not in {row["set"] for row in summary["rows"]}
    (note,) = [n for n in summary["notes"] if "latent_zeroed" in n]
    assert "skipped" in note and "re-export it" in note


def test_eval_refuses_an_uncalibrated_bundle(tmp_path, tiny_models_root, capsys):
    np.savez(tmp_path / "test.npz", images=fashion_like(10, 7))
    code = main([str(tiny_models_root / "tiny" / "1"), "--in-dist", str(tmp_path / "test.npz"), "--out", str(tmp_path)])
    assert code == 2 and "oodgate-calibrate" in capsys.readouterr().err


# ---- any bundle, any domain ------------------------------------------------------------------


@pytest.fixture(scope="module", params=[GRAY8, RGB8], ids=["gray", "rgb"])
def recorded(request, tmp_path_factory, mixed_models_root):
    name = "gray8" if request.param == GRAY8 else "rgb8"
    root = tmp_path_factory.mktemp(f"recorded-{name}")
    return recorded_bundle(root, mixed_models_root, name, request.param), request.param


def test_evaluate_bundle_on_any_domain_uses_the_recorded_test_set(recorded, tmp_path):
    bundle, shape = recorded
    stripes = np.zeros((9, *shape), np.uint8)
    stripes[..., ::2] = 255
    np.savez(tmp_path / "stripes.npz", images=stripes)
    options = EvalOptions(ood_sets={"stripes": str(tmp_path / "stripes.npz")}, per_set=20, threads=1, progress=False)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "guarantees.md").write_text("# written by python -m training.guarantees\n")
    result = evaluate_bundle(bundle, tmp_path / "report", options, set_default=True, plots=shape == RGB8)

    assert result.in_set.n == 120 and "recorded test set" in result.in_set.description
    in_scores = result.in_set.stats["bpd"]
    expected = run_statistics(open_bundle(bundle, threads=1), np.load(bundle.parents[1] / "test.npz")["images"])
    np.testing.assert_allclose(in_scores, expected["bpd"], rtol=1e-6)
    names = [s.name for s in result.sets]
    assert names == ["in-distribution", *default_sets("npz"), "stripes"]  # latent_zeroed included: weights.npz
    assert {s.images.shape[1:] for s in result.sets} == {shape}
    assert result.recommended is not None and all(where in DOMAIN_FREE_OOD for _, where in result.worst.values())
    summary = json.loads((tmp_path / "report" / "metrics.json").read_text())
    targets = {t["target"]: t for t in summary["targets"]}
    assert not any(t.startswith("MNIST") for t in targets)
    assert targets["your set stripes: AUROC >= 0.99 and FPR95 <= 0.05"]["chooses"] is False
    assert load_manifest(bundle).calibration["default_score"] == result.recommended
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "your set stripes" in readme
    assert f"[`guarantees.md`](guarantees.md), by `python -m training.guarantees {bundle}`" in readme  # kept


def test_an_extra_set_may_not_take_a_name(recorded, tmp_path, capsys):
    bundle, shape = recorded
    np.savez(tmp_path / "x.npz", images=np.zeros((3, *shape), np.uint8))
    for args in (["--add", f"photos={tmp_path / 'x.npz'}"], ["--add", "a=1", "--add-invariant", "a=2"]):
        code = main([str(bundle), "--out", str(tmp_path / "r"), "--sets", "constant", "--no-progress", *args])
        err = capsys.readouterr().err
        assert code == 2 and "choose another name" in err, err
    with pytest.raises(SetNameError, match="built-in set"):
        evaluate_bundle(bundle, tmp_path / "r", EvalOptions(ood_sets={"constant": str(tmp_path / "x.npz")}))
    assert not (tmp_path / "r").exists()  # refused before any work


def test_a_bundle_without_a_test_set_says_to_pass_in_dist(calibrated_bundle, tmp_path, capsys):
    code = main([str(calibrated_bundle), "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--in-dist" in err and "Traceback" not in err
