"""The guarantee experiments' bookkeeping on known inputs, and their exact shares against scipy."""

from __future__ import annotations

import numpy as np
import pytest

from training.guarantee_experiments import (
    FDR_LEVELS,
    NULL_FIXED,
    NULL_REDRAWN,
    conditional_experiment,
    drift_experiment,
    fdr_experiment,
    population_share,
    realized_share,
    redrawn_fdr,
)


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
