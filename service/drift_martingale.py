"""The anytime-valid drift alarm on top of the conformal p-values: a conformal test martingale per model.

:mod:`service.guarantees` holds the per-request guarantees (FDR, calibration-conditional
flags); this module holds the one over time. It is pure numpy and the standard
library, so the service (:mod:`service.drift`), the evaluation
(``training.guarantees``) and the tests call the same code.

**Anytime-valid drift alarm** (:class:`DriftMartingale`). A conformal test
martingale (Vovk, Nouretdinov, Gammerman 2003, "Testing exchangeability
on-line"; Vovk, Gammerman, Shafer 2005, "Algorithmic learning in a random world") over the stream of scored
images. The split-conformal p-values (:mod:`service.conformal`) are *not* usable as they are: with a
fixed calibration set, the p-values of new images are exchangeable but not
independent, and conditionally on the calibration set they are i.i.d. but not
uniform (``P(p <= k/(n+1) | cal) = V_(k)``), so a product of bets on them is no
martingale: given the calibration set every bet has the same bias, and the biases
compound: ``E_cal[(E[f(p) | cal])^t]`` can exceed 1 and grows with t, by Jensen,
whenever the bias varies with the calibration set.
Instead the stream is treated as the continuation of the calibration sequence:
image t gets the *smoothed online* conformal p-value against the calibration
scores *and every earlier image of the stream*,
``p_t = (#{j: s_j > s_t} + theta_t * #{j: s_j = s_t}) / (n + t)`` (the count of
ties includes the image itself, ``theta_t`` uniform on (0, 1]). When the
calibration scores and the stream are exchangeable, these p-values are
independent and exactly uniform (Vovk et al. 2003; the score function
was fitted on the *other* part of the held-out slice, so it is fixed). Any bet
``f`` with ``integral_0^1 f = 1`` then makes the running product a test
martingale, and Ville's inequality bounds the chance that it *ever* reaches
``1/delta`` by delta, over an unbounded stream: the alarm's false-alarm
probability. The bets are the power calibrators ``f_k(p) = k p^(k-1)`` (Vovk
et al. 2003) for ``k`` in :data:`KAPPAS`, mixed evenly, and mixed again over the
image at which betting starts with stakes ``1/(s (s+1))`` (half on the first
image): a long in-distribution stretch then does not starve the bets a later
drift would reward (see :class:`TestMartingale`). Each component is a test
martingale and the stakes sum to 1, so the mixture is one too.

What "valid" means here, precisely: the probability is over the draw of the
calibration set *and* the stream, which is what exchangeability promises (the
held-out slice was drawn from the same distribution as the traffic). For the one
calibration set a deployment has, the false-alarm probability is a number whose
average over calibration draws is at most delta; by Markov's inequality it
exceeds ``delta / gamma`` for at most a share gamma of calibration sets (e.g. it
is at most 0.1 for 90% of them at delta 0.01). A calibration set that happens to
sit low makes in-distribution images look a little unusual for the first
``~n`` images, and the martingale can gain on that bias. Betting on the stream
alone (ranks among earlier stream images, calibration unused) would be valid for
every calibration set, but blind to traffic that differs from the start, the
first drift an operator needs to hear about; so the calibration stays the prefix. The
cost of validity is memory: every scored score is kept (8 bytes per image, in
sorted runs), up to :data:`MAX_STREAM_IMAGES`; past that the martingale stops
(a stopped martingale is still one) until it is reset.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .conformal import check_level

DEFAULT_DRIFT_DELTA = 0.01
KAPPAS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # power-calibrator exponents 0.05 ... 0.95
MAX_STREAM_IMAGES = 10_000_000  # 80 MB of scores; past it the martingale stops until reset
CHUNK = 256  # images ranked against each other at once


class OnlineConformal:
    """Smoothed online conformal p-values of a stream, continuing a calibration sequence.

    The stream's scores are kept in sorted runs whose lengths at least double
    down the list (a log-structured merge), so adding an image and ranking one
    cost O(log^2 N) instead of the O(N) of inserting into one sorted array.
    """

    def __init__(self, calibration: np.ndarray, rng: np.random.Generator | None = None) -> None:
        calibration = np.sort(np.asarray(calibration, dtype=np.float64))
        if len(calibration) < 1:
            raise ValueError("an online conformal test needs at least one calibration score")
        self.calibration = calibration
        self.rng = rng if rng is not None else np.random.default_rng()
        self.runs: list[np.ndarray] = []
        self.stream_images = 0

    @property
    def size(self) -> int:
        return len(self.calibration) + self.stream_images

    def _counts(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(#{kept > s}, #{kept == s}) for each score, over the calibration and the stream so far."""
        greater = np.zeros(len(scores), dtype=np.int64)
        equal = np.zeros(len(scores), dtype=np.int64)
        for run in (self.calibration, *self.runs):
            right = np.searchsorted(run, scores, side="right")
            greater += len(run) - right
            equal += right - np.searchsorted(run, scores, side="left")
        return greater, equal

    def add(self, scores: Iterable[float]) -> np.ndarray:
        """The p-values of ``scores``, in order, each against everything before it; then keep them."""
        scores = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=np.float64)
        scores = np.where(np.isnan(scores), np.inf, scores)  # as service.ood does: unscorable is most unusual
        m = len(scores)
        if m == 0:
            return np.zeros(0)
        greater, equal = self._counts(scores)
        earlier = np.tri(m, m, -1, dtype=bool)  # earlier[i, j]: j comes before i in this batch
        greater += np.sum(earlier & (scores[None, :] > scores[:, None]), axis=1)
        equal += np.sum(earlier & (scores[None, :] == scores[:, None]), axis=1) + 1  # ties include the image itself
        total = self.size + np.arange(1, m + 1)
        theta = 1.0 - self.rng.random(m)  # uniform on (0, 1]: a p-value is never 0
        self._keep(np.sort(scores))
        return (greater + theta * equal) / total

    def _keep(self, sorted_scores: np.ndarray) -> None:
        self.runs.append(sorted_scores)
        self.stream_images += len(sorted_scores)
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]), kind="mergesort")


class TestMartingale:
    """A test martingale over uniform p-values, mixed over the bet and over the image where betting starts.

    Component (kappa, s) holds its stake until image s, then bets it on every
    p-value with the power calibrator ``kappa p^(kappa - 1)``. Stakes are
    ``1/len(kappas)`` over kappa times ``pi_s = 1/(s (s+1))`` over s (half of it
    on s = 1, the stream drifted from the start); they sum to 1 and each
    component is a test martingale, so the total wealth is one. Summing over s
    is a recursion per kappa, ``A <- (A + pi_t) * bet(p_t)``, plus the stake not
    yet started, ``sum_{s > t} pi_s = 1/(t+1)``: O(len(kappas)) per image.

    Why mix over the start: under the null every betting component loses, and a
    martingale that has bet on a long in-distribution stretch is far below 1 when a
    drift begins. A component that starts at the drift has lost nothing; the price
    of not knowing when is its stake, about ``1/T^2`` after T images (2 log10 T
    decades), where a fixed-share jumper pays a share of its wealth per image
    (decades growing linearly in T).
    """

    __test__ = False  # not a pytest class

    def __init__(self, kappas: tuple[float, ...] = KAPPAS) -> None:
        self.kappas = np.asarray(kappas, dtype=np.float64)
        if not np.all((self.kappas > 0) & (self.kappas < 1)):
            raise ValueError("power-calibrator exponents must lie in (0, 1)")
        self.t = 0  # p-values bet on so far
        self.started = np.zeros(len(self.kappas))  # A per kappa, in units of 10**scale
        self.scale = 0.0
        self.log10_wealth = 0.0
        self.max_log10_wealth = 0.0

    def payoffs(self, p: np.ndarray) -> np.ndarray:
        """Each bet's payoff on each p-value, ``[len(p), len(kappas)]``; every bet integrates to 1 over (0, 1)."""
        return self.kappas * np.asarray(p, dtype=np.float64)[:, None] ** (self.kappas - 1.0)

    def expected_next(self, payoff: float | np.ndarray) -> float:
        """The wealth after one more p-value whose bets pay ``payoff`` (per kappa), without betting it."""
        pi = 1.0 / ((self.t + 1.0) * (self.t + 2.0))
        started = (self.started * 10.0**self.scale + pi) * payoff
        return float(started.mean() + 1.0 / (self.t + 2.0))

    def update(self, p_values: Iterable[float]) -> float:
        """Bet on each p-value in turn; returns log10 of the wealth after the last."""
        self.path(np.fromiter(p_values, dtype=np.float64))
        return self.log10_wealth

    def path(self, p_values: np.ndarray) -> np.ndarray:
        """Bet on each p-value in turn; log10 of the wealth after each."""
        p = np.asarray(p_values, dtype=np.float64)
        if np.any(~((p > 0.0) & (p <= 1.0))):
            raise ValueError(f"p-values must lie in (0, 1], got {p[~((p > 0.0) & (p <= 1.0))][:3]}")
        payoffs = self.payoffs(p)
        started, scale, t = self.started, self.scale, self.t
        wealth = np.empty(len(p))
        for i, payoff in enumerate(payoffs):
            unit = 10.0**-scale
            started = (started + unit / ((t + 1.0) * (t + 2.0))) * payoff
            t += 1
            top = started.max()
            if top > 1e100:  # keep the numbers in range; the scale carries the decades
                started = started / top
                scale += math.log10(top)
                unit = 10.0**-scale
            wealth[i] = scale + math.log10(started.mean() + unit / (t + 1.0))
        self.started, self.scale, self.t = started, scale, t
        if len(wealth):
            self.log10_wealth = float(wealth[-1])
            self.max_log10_wealth = max(self.max_log10_wealth, float(wealth.max()))
        return wealth


@dataclass(frozen=True)
class DriftState:
    images: int
    log10_wealth: float
    alarm: bool
    alarm_at: int | None  # how many stream images had been seen when the alarm latched


class DriftMartingale:
    """One model's anytime-valid drift test: online conformal p-values of its default score, bet on, latched alarm.

    ``alarm`` latches the first time the wealth reaches ``1 / delta`` and stays
    until :meth:`reset`, which also restarts the test on the calibration set alone
    (each run, from start or reset, has false-alarm probability <= delta).
    Thread-safe.
    """

    def __init__(
        self,
        calibration: np.ndarray,
        delta: float = DEFAULT_DRIFT_DELTA,
        *,
        seed: int | None = None,
        max_images: int = MAX_STREAM_IMAGES,
        kappas: tuple[float, ...] = KAPPAS,
    ) -> None:
        self.delta = check_level(delta, "drift delta")
        self.threshold = -math.log10(self.delta)
        self.calibration = np.sort(np.asarray(calibration, dtype=np.float64))
        self.seed, self.max_images, self.kappas = seed, int(max_images), kappas
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        self.online = OnlineConformal(self.calibration, np.random.default_rng(self.seed))
        self.martingale = TestMartingale(self.kappas)
        self.alarm_at: int | None = None
        self._pending: list[float] = []

    def observe(self, scores: Iterable[float]) -> None:
        """Add scored images in the order they were scored (NaN: unscorable, ranked most unusual).

        They wait in a buffer and are bet on :data:`CHUNK` at a time (or when the
        state is read), so a request of one image pays an append, not the ranking.
        """
        with self._lock:
            self._pending.extend(float(s) for s in scores)
            if len(self._pending) >= CHUNK:
                self._flush()

    def _flush(self) -> None:
        room = max(self.max_images - self.online.stream_images, 0)
        scores = np.asarray(self._pending[:room], dtype=np.float64)
        self._pending = []
        for start in range(0, len(scores), CHUNK):  # the within-batch ranking is quadratic: bounded chunks
            seen = self.online.stream_images
            wealth = self.martingale.path(self.online.add(scores[start : start + CHUNK]))
            if self.alarm_at is None and len(crossed := np.nonzero(wealth >= self.threshold)[0]):
                self.alarm_at = seen + int(crossed[0]) + 1

    def reset(self) -> None:
        with self._lock:
            self._start()

    def state(self) -> DriftState:
        with self._lock:
            self._flush()
            return DriftState(
                self.online.stream_images, self.martingale.log10_wealth, self.alarm_at is not None, self.alarm_at
            )
