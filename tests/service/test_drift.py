"""Drift monitor: window statistics with known answers, and the typicality test's calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.drift import DriftMonitor, TypicalityTest


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    return np.random.default_rng(1).normal(3.0, 0.2, size=2000)


def test_window_statistics_are_exact(calibration):
    monitor = DriftMonitor(calibration, alpha=0.05, window=10, min_images=1)
    monitor.observe([3.0] * 4, [0.01, 0.05, 0.5, 0.9])
    snap = monitor.snapshot()
    assert snap.images == 4
    assert snap.ood_rate == pytest.approx(0.5)  # 0.01 and 0.05 are <= alpha
    assert snap.mean_p_value == pytest.approx((0.01 + 0.05 + 0.5 + 0.9) / 4)
    assert snap.mean_bpd == pytest.approx(3.0)
    assert snap.calibration_mean_bpd == pytest.approx(calibration.mean())
    assert snap.alpha == 0.05


def test_window_slides(calibration):
    monitor = DriftMonitor(calibration, alpha=0.1, window=5, min_images=1)
    monitor.observe([1.0] * 5, [0.0] * 5)
    monitor.observe([2.0] * 3, [1.0] * 3)
    snap = monitor.snapshot()
    assert snap.images == 5
    assert snap.mean_bpd == pytest.approx((2 * 1.0 + 3 * 2.0) / 5)
    assert snap.ood_rate == pytest.approx(2 / 5)


def test_too_few_images_say_nothing(calibration):
    monitor = DriftMonitor(calibration, alpha=0.05, window=100, min_images=20)
    monitor.observe([10.0] * 19, [0.0] * 19)
    snap = monitor.snapshot()
    assert snap.images == 19
    assert all(math.isnan(v) for v in (snap.ood_rate, snap.mean_p_value, snap.mean_bpd, snap.typicality_p_value))


def test_uncalibrated_model_tracks_bpd_only():
    monitor = DriftMonitor(None, alpha=0.05, window=10, min_images=1)
    monitor.observe([2.0, 4.0], None)
    snap = monitor.snapshot()
    assert snap.mean_bpd == pytest.approx(3.0)
    assert math.isnan(snap.ood_rate) and math.isnan(snap.typicality_p_value)
    assert math.isnan(snap.calibration_mean_bpd)


def test_p_value_is_the_resampling_count(calibration):
    test = TypicalityTest(calibration, max_window=50, resamples=500, seed=3)
    window_mean = calibration.mean() + 0.03
    deviations = test.null_deviations(50)
    assert test.p_value(window_mean, 50) == pytest.approx((1 + np.sum(deviations >= 0.03 - 1e-12)) / 501)
    # The running sums reproduce the resampled means for every window size.
    assert test.null_deviations(1).max() <= np.abs(calibration - calibration.mean()).max() + 1e-12


def test_in_distribution_windows_give_uniform_p_values(calibration):
    """The test's false-alarm rate at 0.05 on windows of calibration-like data is about 0.05."""
    test = TypicalityTest(calibration, max_window=100, resamples=1000, seed=0)
    rng = np.random.default_rng(7)
    p = np.array([test.p_value(rng.normal(3.0, 0.2, size=100).mean(), 100) for _ in range(400)])
    assert 0.02 <= np.mean(p <= 0.05) <= 0.09
    assert 0.4 <= p.mean() <= 0.6


def test_shift_in_either_direction_is_atypical(calibration):
    """MNIST has lower bpd than FashionMNIST under a FashionMNIST flow, noise higher: both are drift."""
    monitor = DriftMonitor(calibration, alpha=0.05, window=100, resamples=1000)
    floor = 1 / 1001
    for shift in (-0.15, 0.15):
        monitor.reset()
        monitor.observe(np.random.default_rng(2).normal(3.0 + shift, 0.2, size=100), [0.5] * 100)
        assert monitor.snapshot().typicality_p_value == pytest.approx(floor)
    monitor.reset()
    monitor.observe([math.inf] + [3.0] * 99, [0.5] * 100)
    assert monitor.snapshot().typicality_p_value == pytest.approx(floor)
    monitor.reset()
    monitor.observe(np.random.default_rng(4).normal(3.0, 0.2, size=100), [0.5] * 100)
    assert monitor.snapshot().typicality_p_value > 0.05


def gauge(metrics, name: str, model: str = "m", version: str = "1") -> float:
    return metrics.registry.get_sample_value(name, {"model": model, "version": version})


def test_tracker_publishes_gauges(calibration):
    from types import SimpleNamespace

    from service.decision import Decision
    from service.drift import DriftTracker
    from service.metrics import Metrics

    metrics = Metrics(process=False)
    detector = SimpleNamespace(calibration={"bpd": calibration}, default_alpha=0.1)
    entry = SimpleNamespace(name="m", version="1", detector=detector)
    tracker = DriftTracker(metrics, window=50, resamples=200)
    tracker.attach([entry])
    assert gauge(metrics, "oodgate_drift_window_images") == 0
    assert math.isnan(gauge(metrics, "oodgate_drift_typicality_p_value"))
    assert gauge(metrics, "oodgate_drift_alpha") == 0.1
    decisions = [Decision({}, "bpd", p, p <= 0.1) for p in np.linspace(0.01, 1.0, 40)] + [None]
    tracker.observe(entry, np.full(41, 2.0), decisions)  # the failed image (None) is left out
    assert gauge(metrics, "oodgate_drift_window_images") == 40
    assert gauge(metrics, "oodgate_drift_mean_bpd") == pytest.approx(2.0)
    assert gauge(metrics, "oodgate_drift_ood_rate") == pytest.approx(np.mean(np.linspace(0.01, 1.0, 40) <= 0.1))
    assert gauge(metrics, "oodgate_drift_calibration_mean_bpd") == pytest.approx(calibration.mean())
    assert gauge(metrics, "oodgate_drift_typicality_p_value") == pytest.approx(1 / 201)  # 2.0 is far from 3.0
