"""The anytime-valid drift alarm: fair bets, uniform online p-values, bounded wealth, an alarm that latches."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from service.drift_martingale import KAPPAS, DriftMartingale, OnlineConformal, TestMartingale


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
