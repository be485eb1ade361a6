"""``python -m training.guarantees``: the experiments' bookkeeping on known inputs, and the command end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from service.artifact import load_manifest
from service.calibration_file import load_detector
from training.calibrate import calibrate_bundle
from training.guarantees import (
    FDR_LEVELS,
    NULL_FIXED,
    NULL_REDRAWN,
    calibration_parity,
    conditional_experiment,
    drift_experiment,
    fdr_experiment,
    main,
    ood_set,
    population_share,
    realized_share,
    redrawn_fdr,
)
from training.scoring import open_bundle

from .test_evaluate import fashion_like


def test_fdr_bookkeeping_on_separable_scores():
    """OOD scores above every in-distribution one: BH finds them all and nothing else, so FDP 0, power 1."""
    rng = np.random.default_rng(0)
    calibration = np.sort(rng.uniform(0, 1, size=999))
    rows = fdr_experiment(calibration, rng.uniform(0, 1, 5000), rng.uniform(5, 6, 500), 50, 100, rng)
    for row in rows:
        assert row.mean_power == 1.0 and row.mean_fdp <= row.q
        assert row.alpha_mean_power == 1.0
        assert row.alpha_mean_fdp > row.mean_fdp  # per-image alpha flags in-distribution images too


def test_redrawn_fdr_counts_the_in_distribution_images_flagged():
    """No OOD separation at all: every discovery is false, so the mean FDP is the share of batches with any."""
    rng = np.random.default_rng(0)
    same = rng.uniform(0, 1, 3000)
    fdp = redrawn_fdr(np.sort(same[:999]), same[999:], rng.uniform(0, 1, 500), 200, 100, rng)
    assert set(fdp) == set(FDR_LEVELS)
    for q, value in fdp.items():
        assert value <= q + 0.05  # OOD like in-distribution: FDR = P(any discovery) <= q (BH under the global null)
    separable = redrawn_fdr(np.sort(same[:999]), same[999:], rng.uniform(5, 6, 500), 50, 100, rng)
    assert all(value <= q for q, value in separable.items())


def test_conditional_bookkeeping_matches_the_guarantee():
    rng = np.random.default_rng(1)
    rows = conditional_experiment(
        np.sort(rng.normal(size=2000)), rng.normal(size=4000), rng.normal(3, 1, 100), 100, 0.1, rng
    )
    for row in rows:
        assert row.share_conditional_above <= 0.2  # delta 0.1, 100 splits: well inside
        assert row.share_plain_above > row.share_conditional_above
        assert row.mean_fpr_conditional < row.alpha < row.mean_fpr_plain + 0.01
        assert row.ood_flagged_conditional <= row.ood_flagged_plain


def test_drift_bookkeeping_counts_delays_from_the_change():
    rng = np.random.default_rng(2)
    rows = drift_experiment(
        np.sort(rng.normal(size=2000)), rng.normal(size=6000), rng.normal(6, 1, 3000), 4, 4000, 1000, 0.01, rng
    )
    *nulls, ten, five = rows
    assert [null.stream for null in nulls] == [NULL_FIXED, NULL_REDRAWN]
    for null in nulls:
        assert null.change_at is None and null.alarms == null.early_alarms <= 1
    mixtures = [ten, five]
    for row in mixtures:
        assert row.alarms == 4 and row.early_alarms == 0  # far-off OOD scores: every stream, after the change
        assert 0 < row.delay_median <= row.delay_max < 3000


def test_exact_shares_match_scipy():
    from scipy import stats

    n, m, k, alpha = 300, 1000, 17, 0.05
    # scipy's nhypergeom counts "successes" (test scores) drawn before the k-th "failure" (calibration score)
    assert realized_share(n, m, k, alpha) == pytest.approx(stats.nhypergeom(n + m, m, k).sf(alpha * m), abs=1e-9)
    assert population_share(n, k, alpha) == pytest.approx(stats.beta(k, n + 1 - k).sf(alpha), abs=1e-9)


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
