"""The guarantees' math: BH by hand and the conditional correction's known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from service.guarantees import (
    benjamini_hochberg,
    bh_threshold,
    binomial_upper_tail,
    conditional_rank,
    marginal_rank,
    p_value_threshold,
    simes_band,
    simes_band_lower,
    thresholds,
)


def test_bh_against_hand_computed_examples():
    # m = 5, q = 0.1: the bounds k q / m are .02 .04 .06 .08 .10; sorted p .005 .01 .03 .04 .2 pass up to k = 4
    p = [0.01, 0.04, 0.03, 0.2, 0.005]
    assert benjamini_hochberg(p, 0.1).tolist() == [True, True, True, False, True]
    assert bh_threshold(p, 0.1) == 0.04
    # step-up: p_(1) = .02 misses its bound 1/3 * .05 = .0167, but p_(3) = .04 <= .05 rejects all three
    assert benjamini_hochberg([0.04, 0.02, 0.03], 0.05).tolist() == [True, True, True]
    # nothing small enough: no discovery, cutoff 0
    assert benjamini_hochberg([0.3, 0.02, 0.9], 0.05).tolist() == [False, False, False]
    assert bh_threshold([0.3, 0.02, 0.9], 0.05) == 0.0
    # one image: BH is the per-image flag p <= q
    assert benjamini_hochberg([0.05], 0.05).tolist() == [True]
    assert benjamini_hochberg([], 0.1).tolist() == []


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, math.nan])
def test_bh_refuses_a_level_outside_zero_one(q):
    with pytest.raises(ValueError, match="fdr"):
        benjamini_hochberg([0.1], q)


def test_bh_controls_fdr_on_conformal_p_values():
    """Shared calibration set (PRDS p-values): mean FDP over many batches stays under q."""
    rng = np.random.default_rng(0)
    q, fdp = 0.1, []
    for _ in range(400):
        cal = np.sort(rng.normal(size=200))
        nulls, outliers = rng.normal(size=45), rng.normal(2.5, 1.0, size=5)
        scores = np.concatenate([nulls, outliers])
        p = (1 + len(cal) - np.searchsorted(cal, scores, side="left")) / (len(cal) + 1)
        found = benjamini_hochberg(p, q)
        fdp.append(found[:45].sum() / max(found.sum(), 1))
    assert np.mean(fdp) <= q


def test_binomial_tail_matches_scipy():
    for n, alpha in [(9, 0.5), (3000, 0.05), (5000, 0.01)]:
        tail = binomial_upper_tail(n, alpha)
        k = np.arange(n + 2)
        assert tail == pytest.approx(stats.binom.sf(k - 1, n, alpha), abs=1e-9)


def test_simes_band_known_answer():
    # n = 4, k = 2, delta = 0.1: a_i = sqrt(0.1) sqrt(i (i-1) / (4 * 3)) for i >= 2, a_1 = 0; b_r = 1 - a_{5-r}
    a = math.sqrt(0.1) * np.sqrt(np.array([0.0, 2.0, 6.0, 12.0]) / 12.0)
    assert simes_band_lower(4, 0.1) == pytest.approx(a)
    assert simes_band(4, 0.1) == pytest.approx([0.683772, 0.776393, 0.870901, 1.0], abs=1e-6)
    assert conditional_rank(4, 0.7, 0.1) == 1  # b_1 = .684 <= .7 < b_2
    assert conditional_rank(4, 0.8, 0.1) == 2  # b_2 = .776 <= .8 < b_3 = .871
    assert conditional_rank(4, 0.5, 0.1) == 0  # no rank is safe: b_1 > .5
    assert marginal_rank(4, 0.8) == 4  # the plain flag: p <= 4/5
    assert p_value_threshold(4, 0.8, 0.1) == pytest.approx(0.4)
    assert p_value_threshold(4, 0.8) == pytest.approx(0.8)
    # too few calibration scores for any safe flag
    assert conditional_rank(20, 0.05, 0.1) == 0
    assert thresholds(np.arange(21.0), 0.05, 0.1).score is None
    # the r-th largest calibration score is where the flag starts
    cal = np.arange(1.0, 5.0)  # 1..4
    assert thresholds(cal, 0.8, 0.1).score == 3.0  # the 2nd largest: p <= 2/5 iff s > 3
    assert thresholds(cal, 0.8).score == 1.0  # the plain rank 4: p <= 4/5 iff s > 1


def test_simes_band_covers_uniform_order_statistics_simultaneously():
    """P(U_(i) <= b_i for every i) >= 1 - delta (the Simes inequality), and the band is no wider than it must be."""
    rng = np.random.default_rng(2)
    n, delta, draws = 200, 0.1, 4000
    band = simes_band(n, delta)
    assert np.all(np.diff(band) >= 0)
    u = np.sort(rng.random((draws, n)), axis=1)
    missed = np.mean(np.any(u > band, axis=1))
    assert missed <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    assert missed >= delta / 4  # a real band at level delta, not a blanket margin


def test_conditional_flags_hold_for_all_but_delta_of_calibration_sets():
    """Normal scores, so each calibration set's true FPR is exact: P(S > threshold)."""
    rng = np.random.default_rng(1)
    n, delta, draws = 499, 0.1, 2000
    for alpha in (0.05, 0.2):
        marginal, conditional = [], []
        for _ in range(draws):
            cal = np.sort(rng.normal(size=n))
            marginal.append(stats.norm.sf(thresholds(cal, alpha).score))
            conditional.append(stats.norm.sf(thresholds(cal, alpha, delta).score))
        share = np.mean(np.array(conditional) > alpha)
        assert share <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
        assert np.mean(np.array(marginal) > alpha) > 0.3  # the plain flag misses the conditional bound often
        # simultaneous over alpha, so at one alpha it flags no more than the exact single-alpha binomial rank
        exact = int(np.nonzero(stats.binom.sf(np.arange(n + 1) - 1, n, alpha) >= 1 - delta)[0][-1])
        assert 0 < conditional_rank(n, alpha, delta) <= exact
