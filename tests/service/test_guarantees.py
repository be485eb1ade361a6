"""The guarantees' math: BH by hand, the conditional correction's known answers, the test martingale's validity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from service.guarantees import (
    KAPPAS,
    DriftMartingale,
    OnlineConformal,
    TestMartingale,
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


def test_every_bet_is_fair():
    """Each power calibrator integrates to 1 on (0, 1): a fair bet against a uniform p-value."""
    for kappa in KAPPAS:
        value, _ = integrate.quad(lambda p, k=kappa: k * p ** (k - 1), 0, 1)
        assert value == pytest.approx(1.0, abs=1e-6)


def test_online_p_values_are_uniform_even_with_ties():
    """Smoothed online conformal p-values of an exchangeable stream: i.i.d. uniform (discrete scores included)."""
    rng = np.random.default_rng(2)
    online = OnlineConformal(rng.integers(0, 5, size=50).astype(float), np.random.default_rng(3))
    p = np.concatenate([online.add(rng.integers(0, 5, size=size).astype(float)) for size in (1, 7, 300, 2000)])
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert np.all((p > 0) & (p <= 1))
    assert online.size == 50 + 2308


def test_online_counts_match_a_brute_force_rank():
    rng = np.random.default_rng(4)
    cal = rng.normal(size=30)
    online = OnlineConformal(cal, np.random.default_rng(0))
    seen = list(cal)
    for size in (3, 1, 9, 20, 2, 40):
        batch = np.round(rng.normal(size=size), 1)  # ties within and across batches
        p = online.add(batch)
        for i, s in enumerate(batch):
            before = np.array(seen + list(batch[:i]) + [s])
            greater, equal = np.sum(before > s), np.sum(before == s)
            assert greater / len(before) < p[i] <= (greater + equal) / len(before)
        seen.extend(batch)


def test_wealth_on_a_uniform_stream_stays_bounded():
    martingale = TestMartingale()
    martingale.update(np.random.default_rng(5).uniform(size=20000))
    assert martingale.max_log10_wealth < 2.0  # never near 1/delta = 100


def test_wealth_on_small_p_values_crosses_the_threshold():
    martingale = TestMartingale()
    rng = np.random.default_rng(6)
    wealth = [martingale.update([p]) for p in rng.uniform(0, 0.05, size=60)]
    assert wealth[-1] >= 2.0
    assert np.argmax(np.array(wealth) >= 2.0) < 40


def test_next_bet_is_fair_from_any_state():
    """The martingale property: from whatever state a stream left, the expected wealth after the next p-value is
    the wealth now."""
    martingale = TestMartingale()
    martingale.update([0.001, 0.3, 0.02, 0.9, 0.5, 0.004])  # some state far from the start
    # p = u ** 20 takes the p ** -0.95 singularity out of the integrand: dp = 20 u ** 19 du
    expected, _ = integrate.quad(
        lambda u: martingale.expected_next(martingale.payoffs(np.array([u**20]))[0]) * 20 * u**19, 0, 1, limit=200
    )
    assert expected == pytest.approx(10**martingale.log10_wealth, rel=1e-6)
    assert martingale.expected_next(martingale.payoffs(np.array([0.37]))[0]) == pytest.approx(
        10 ** TestMartingale().update([0.001, 0.3, 0.02, 0.9, 0.5, 0.004, 0.37]), rel=1e-9
    )


def test_a_drift_after_a_long_quiet_stretch_is_still_found():
    """Betting that starts late: 50,000 uniform p-values, then small ones, and the wealth still climbs fast."""
    martingale = TestMartingale()
    martingale.update(np.random.default_rng(9).uniform(size=50000))
    assert martingale.log10_wealth < 0
    wealth = martingale.path(np.random.default_rng(10).uniform(0, 0.05, size=300))
    assert np.argmax(wealth >= 2.0) < 150


def test_drift_alarm_latches_and_resets():
    rng = np.random.default_rng(8)
    drift = DriftMartingale(rng.normal(size=1000), delta=0.01, seed=0)
    drift.observe(rng.normal(size=3000))  # in distribution
    assert not drift.state().alarm and drift.state().images == 3000
    drift.observe(rng.normal(2.0, 1.0, size=300))  # shifted
    state = drift.state()
    assert state.alarm and 3000 < state.alarm_at <= 3300 and state.log10_wealth >= 2.0
    drift.observe(rng.normal(size=5000))
    assert drift.state().alarm  # latched, whatever the wealth does next
    drift.reset()
    assert drift.state() == type(state)(0, 0.0, False, None)


def test_drift_stops_at_its_image_budget():
    drift = DriftMartingale(np.arange(10.0), max_images=25, seed=0)
    drift.observe(np.arange(20.0))
    drift.observe(np.arange(20.0))
    assert drift.state().images == 25
