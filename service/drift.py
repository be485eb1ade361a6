"""Drift monitoring: is the recent traffic, as a whole, still like the calibration data?

Per-image flags answer "is this image out of distribution"; an operator also
needs "has the traffic moved", and needs it before most images are flagged.
For each model a :class:`DriftMonitor` keeps a sliding window of the last
``window`` images and reports:

- the OOD rate: the share of the window's p-values at or below the model's
  default alpha (about alpha on in-distribution traffic, by the conformal bound);
- the mean p-value (about 0.5 on in-distribution traffic: p is uniform);
- the typicality test of Nalisnick et al. 2019 ("Detecting out-of-distribution
  inputs to deep generative models using typicality"): the statistic is
  ``|mean bpd of the window - mean calibration bpd|``; its null distribution is
  that of the same statistic for windows of the same size drawn with
  replacement from the calibration bpd values, and the p-value is
  ``(1 + #{resampled >= observed}) / (B + 1)``. A window of MNIST digits has a
  *lower* mean bpd than FashionMNIST, one of noise a higher one: the test is
  two-sided, so both count.

The resampled windows are drawn once per model (``B x window`` indices, fixed
seed) and kept as running sums, so the null distribution for any window size up
to ``window`` costs one column read: the test runs on every update, in
microseconds, without touching the hot path's latency.

:class:`DriftTracker` keeps one monitor per model and backs the
``oodgate_drift_*`` gauges of :class:`service.metrics.Metrics` with callbacks,
so the statistics are computed at scrape time, not on the request path.

The window statistics have no error rate over time: watched long enough, an
in-distribution stream crosses any fixed line. Calibrated models also get an
anytime-valid test (:class:`service.drift_martingale.DriftMartingale`) over every image
scored since start-up (or the last reset) with the model's default score: its
alarm's probability of *ever* firing on an in-distribution stream is at most
``drift_delta``. It latches; ``POST /admin/drift/reset`` clears it and restarts
the test (:meth:`DriftTracker.reset_alarm`).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .drift_martingale import DEFAULT_DRIFT_DELTA, DriftMartingale, DriftState

DEFAULT_WINDOW = 500
DEFAULT_RESAMPLES = 2000
DEFAULT_MIN_IMAGES = 20


@dataclass(frozen=True)
class DriftSnapshot:
    """The window's statistics; ``nan`` where there is nothing to say yet."""

    images: int
    ood_rate: float
    mean_p_value: float
    mean_bpd: float
    calibration_mean_bpd: float
    typicality_p_value: float
    alpha: float


class TypicalityTest:
    """Two-sided test of a window's mean bpd against resampled calibration windows."""

    def __init__(self, calibration_bpd: np.ndarray, max_window: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0):
        values = np.asarray(calibration_bpd, dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values) < 2:
            raise ValueError("the typicality test needs at least two finite calibration bpd values")
        self.mean = float(values.mean())
        self.max_window = int(max_window)
        self.resamples = int(resamples)
        rng = np.random.default_rng(seed)
        draws = values[rng.integers(0, len(values), size=(self.resamples, self.max_window))]
        # running[:, k-1] = sum of the first k draws of each resampled window
        self._running = np.cumsum(draws, axis=1)

    def null_deviations(self, size: int) -> np.ndarray:
        """``|resampled window mean - calibration mean|`` for windows of ``size`` images."""
        if not 1 <= size <= self.max_window:
            raise ValueError(f"window size must be in 1..{self.max_window}, got {size}")
        return np.abs(self._running[:, size - 1] / size - self.mean)

    def p_value(self, window_mean: float, size: int) -> float:
        if not math.isfinite(window_mean):
            return 1.0 / (self.resamples + 1)  # a non-finite bpd is as atypical as it gets
        observed = abs(window_mean - self.mean)
        # a hair of tolerance so that float rounding never makes a tie look like a miss
        at_least = int(np.count_nonzero(self.null_deviations(size) >= observed - 1e-12))
        return (1 + at_least) / (self.resamples + 1)


class DriftMonitor:
    """Sliding window of one model's recent images; thread-safe, O(1) per image plus the test."""

    def __init__(
        self,
        calibration_bpd: np.ndarray | None,
        alpha: float,
        window: int = DEFAULT_WINDOW,
        resamples: int = DEFAULT_RESAMPLES,
        min_images: int = DEFAULT_MIN_IMAGES,
        seed: int = 0,
    ) -> None:
        if window < 1:
            raise ValueError("the drift window must hold at least one image")
        self.window = int(window)
        self.alpha = float(alpha)
        self.min_images = max(1, min(int(min_images), self.window))
        self.test = None
        if calibration_bpd is not None and len(calibration_bpd) >= 2:
            self.test = TypicalityTest(calibration_bpd, self.window, resamples, seed)
        self._lock = threading.Lock()
        self.generation = 0  # bumped by every observe/reset: lets readers cache snapshots
        self._bpd: deque[float] = deque(maxlen=self.window)
        self._p: deque[float] = deque(maxlen=self.window)  # nan for images without a p-value

    def observe(self, bpd: Iterable[float], p_values: Iterable[float | None] | None = None) -> None:
        """Add a batch of images (their bpd and, when calibrated, their p-values) to the window."""
        bpd = [float(b) for b in bpd]
        ps = [math.nan] * len(bpd) if p_values is None else [math.nan if p is None else float(p) for p in p_values]
        if len(ps) != len(bpd):
            raise ValueError(f"{len(ps)} p-values for {len(bpd)} images")
        with self._lock:
            self._bpd.extend(bpd)
            self._p.extend(ps)
            self.generation += 1

    def reset(self) -> None:
        with self._lock:
            self._bpd.clear()
            self._p.clear()
            self.generation += 1

    def snapshot(self) -> DriftSnapshot:
        with self._lock:
            bpd = np.fromiter(self._bpd, dtype=np.float64, count=len(self._bpd))
            ps = np.fromiter(self._p, dtype=np.float64, count=len(self._p))
        n = len(bpd)
        calibration_mean = self.test.mean if self.test is not None else math.nan
        if n < self.min_images:
            return DriftSnapshot(n, math.nan, math.nan, math.nan, calibration_mean, math.nan, self.alpha)
        finite = bpd[np.isfinite(bpd)]
        mean_bpd = float(bpd.mean()) if len(finite) == n else math.inf
        known = ps[~np.isnan(ps)]
        ood_rate = float(np.mean(known <= self.alpha)) if len(known) else math.nan
        mean_p = float(known.mean()) if len(known) else math.nan
        typicality = self.test.p_value(mean_bpd, n) if self.test is not None else math.nan
        return DriftSnapshot(n, ood_rate, mean_p, mean_bpd, calibration_mean, typicality, self.alpha)


def monitor_for(
    detector, window: int = DEFAULT_WINDOW, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> DriftMonitor:
    """A monitor for a :class:`service.ood.Detector`: its calibration bpd values and default alpha.

    The calibration set of the ``bpd`` score is the held-out slice's bpd (that
    score needs no fit), exactly the sample the typicality test resamples.
    An uncalibrated model gets a monitor that tracks the mean bpd only.
    """
    calibration = getattr(detector, "calibration", {}) or {}
    return DriftMonitor(calibration.get("bpd"), detector.default_alpha, window=window, resamples=resamples, seed=seed)


class DriftTracker:
    """One :class:`DriftMonitor` per loaded model, fed by the data plane, read by the drift gauges.

    Feeding costs a deque append per image; the window statistics and the
    typicality test are computed when ``/metrics`` is scraped (gauge callbacks,
    cached until the window changes), so the request path never pays for them.
    :meth:`attach` runs at start-up so every model's gauges exist (NaN until the
    window holds enough).
    """

    FIELDS = {
        "drift_window_images": "images",
        "drift_ood_rate": "ood_rate",
        "drift_mean_p_value": "mean_p_value",
        "drift_mean_bpd": "mean_bpd",
        "drift_calibration_mean_bpd": "calibration_mean_bpd",
        "drift_typicality_p_value": "typicality_p_value",
        "drift_alpha": "alpha",
    }

    def __init__(
        self,
        metrics,
        window: int = DEFAULT_WINDOW,
        resamples: int = DEFAULT_RESAMPLES,
        delta: float = DEFAULT_DRIFT_DELTA,
    ) -> None:
        self.metrics = metrics
        self.window = window
        self.resamples = resamples
        self.delta = delta
        self.monitors: dict[tuple[str, str], DriftMonitor] = {}
        self.martingales: dict[tuple[str, str], tuple[str, DriftMartingale]] = {}  # key -> (score, test)
        self._cache: dict[tuple[str, str], tuple[int, DriftSnapshot]] = {}

    def attach(self, entries: Iterable) -> None:
        for entry in entries:
            key = (entry.name, entry.version)
            self.monitors[key] = monitor_for(entry.detector, self.window, self.resamples)
            for attribute, field in self.FIELDS.items():
                gauge = getattr(self.metrics, attribute).labels(*key)
                gauge.set_function(lambda key=key, field=field: getattr(self.snapshot(key), field))
            detector = entry.detector
            if getattr(detector, "fitted", False):  # an uncalibrated model has no scores to test
                score = detector.default_score
                test = DriftMartingale(detector.calibration[score], self.delta)
                self.martingales[key] = (score, test)
                self.metrics.drift_martingale.labels(*key).set_function(lambda t=test: t.state().log10_wealth)
                self.metrics.drift_alarm.labels(*key).set_function(lambda t=test: float(t.state().alarm))
                self.metrics.drift_alarm_resets.labels(*key)  # the series exists (at 0) before the first reset

    def snapshot(self, key: tuple[str, str]) -> DriftSnapshot:
        """The model's window statistics, recomputed only when images arrived since the last call."""
        monitor = self.monitors[key]
        generation = monitor.generation
        cached = self._cache.get(key)
        if cached is None or cached[0] != generation:
            cached = (generation, monitor.snapshot())
            self._cache[key] = cached
        return cached[1]

    def observe(self, entry, bpd, decisions) -> None:
        """Add one request's scored images (``decisions[i] is None``: failed, left out)."""
        monitor = self.monitors.get((entry.name, entry.version))
        if monitor is None:
            return
        done = [i for i, d in enumerate(decisions) if d is not None]
        if done:
            monitor.observe([bpd[i] for i in done], [decisions[i].p_value for i in done])
            martingale = self.martingales.get((entry.name, entry.version))
            if martingale is not None:
                score, test = martingale
                test.observe([decisions[i].scores[score] for i in done])

    def reset_alarm(self, key: tuple[str, str]) -> DriftState | None:
        """Clear the model's drift alarm and restart its test; the state before (None: the model has no test)."""
        martingale = self.martingales.get(key)
        if martingale is None:
            return None
        test = martingale[1]
        before = test.state()
        test.reset()
        self.metrics.drift_alarm_resets.labels(*key).inc()
        return before
