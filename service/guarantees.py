"""Three guarantees on top of the conformal p-values: FDR per batch, calibration-conditional flags, a drift alarm.

:mod:`service.conformal` turns a score into the split-conformal p-value
``p = (1 + #{cal >= s}) / (n + 1)``, whose flag ``p <= alpha`` has a *marginal*
false-positive rate of at most alpha on in-distribution images (averaged over
the draw of the calibration set). This module holds the math of three stronger
statements. It is pure numpy and the standard library, so the service, the
evaluation (``training.guarantees``) and the tests call the same code.

**False-discovery rate per request** (:func:`benjamini_hochberg`). Conformal
p-values that share one calibration set are positively dependent (PRDS), so
Benjamini-Hochberg at level q over a batch's p-values keeps the expected share
of in-distribution images among the flagged ones at most ``q * m0 / m <= q``
(Bates, Candès, Lei, Romano, Sesia 2023, "Testing for outliers with conformal
p-values", Ann. Statist.). Assumes the batch's in-distribution images
and the calibration set are exchangeable (i.i.d. from one distribution).

**Calibration-conditional flags** (:func:`conditional_rank`). The marginal
bound is an average over calibration sets: for *this* calibration set the
false-positive rate of ``p <= r/(n+1)`` is ``V_(r)``, the r-th smallest of n
uniform variables (``V_i = P(S > s_i)``, the in-distribution tail probability
of the i-th calibration score). Bates, Candès, Lei, Romano, Sesia 2023 (Section
3) make the p-values calibration-conditional with a *simultaneous* upper band
``b_1 <= ... <= b_n`` for the order statistics of n uniforms,
``P(U_(i) <= b_i for every i) >= 1 - delta``: the adjusted p-value of a plain
``r/(n+1)`` is ``b_r`` (1 for r = n + 1), and then, with probability at least
``1 - delta`` over the calibration draw, ``P(adjusted p <= t | cal) <= t`` for
*every* t at once. Their Simes band (:func:`simes_band`, with their default
``k = n/2``) is ``b_{n+1-i} = 1 - a_i``,
``a_i = delta^(1/k) (i (i-1) ... (i-k+1) / (n (n-1) ... (n-k+1)))^(1/k)`` for
``i >= k`` and ``a_i = 0`` below (so ``b = 1`` for the top ``k - 1`` ranks).
The flag ``adjusted p <= alpha`` is the plain flag at rank
``k_alpha = max{r: b_r <= alpha}`` (:func:`conditional_rank`), so the service
keeps comparing the plain p-value with a cutoff ``k_alpha / (n+1)``. Because the
band holds at every threshold at once, the false-positive rate stays below alpha
by a margin the test set's own sampling noise does not eat: the exact
single-alpha correction (the largest k with ``P(Bin(n, alpha) >= k) >= 1 -
delta``; Vovk 2012) bounds the *population* FPR by delta with no slack, so a
finite test set's *realized* FPR exceeded alpha in more than a share delta of
calibration draws (docs/ood-report/guarantees.md, before this band). The price
is fewer flags at each alpha. Assumes continuous scores (the flow's are) and
exchangeability as above. The default delta is :data:`DEFAULT_CONDITIONAL_DELTA` (0.1).

**Anytime-valid drift alarm** (:class:`DriftMartingale`). A conformal test
martingale (Vovk, Nouretdinov, Gammerman 2003, "Testing exchangeability
on-line"; Vovk, Gammerman, Shafer 2005, "Algorithmic learning in a random world") over the stream of scored
images. The split-conformal p-values above are *not* usable as they are: with a
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

import functools
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .conformal import check_level

DEFAULT_CONDITIONAL_DELTA = 0.1
DEFAULT_DRIFT_DELTA = 0.01
COMMON_ALPHAS = (0.01, 0.05, 0.1)  # the levels GET /models shows thresholds for
KAPPAS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # power-calibrator exponents 0.05 ... 0.95
MAX_STREAM_IMAGES = 10_000_000  # 80 MB of scores; past it the martingale stops until reset
CHUNK = 256  # images ranked against each other at once


# --------------------------------------------------------------------------- FDR


def bh_threshold(p_values: Iterable[float], q: float) -> float:
    """The Benjamini-Hochberg cutoff: ``p_(k)`` for the largest k with ``p_(k) <= k q / m``; 0 when there is none."""
    q = check_level(q, "fdr")
    p = np.sort(np.asarray(list(p_values) if not isinstance(p_values, np.ndarray) else p_values, dtype=np.float64))
    m = len(p)
    if m == 0:
        return 0.0
    passing = np.nonzero(p <= q * np.arange(1, m + 1) / m)[0]
    return float(p[passing[-1]]) if len(passing) else 0.0


def benjamini_hochberg(p_values: Iterable[float], q: float) -> np.ndarray:
    """The BH discoveries at level q: a boolean per p-value, in the order given (step-up, not step-down)."""
    p = np.asarray(list(p_values) if not isinstance(p_values, np.ndarray) else p_values, dtype=np.float64)
    cutoff = bh_threshold(p, q)
    return (p <= cutoff) & (cutoff > 0)


# --------------------------------------------------------------------------- calibration-conditional


def binomial_upper_tail(n: int, alpha: float) -> np.ndarray:
    """``P(Bin(n, alpha) >= k)`` for k = 0 .. n + 1, from log-space pmf (no scipy in the service).

    ``P(V_(k) > alpha) = P(Bin(n, alpha) < k)``: the chance that the flag at rank k
    has a population FPR above alpha, which the evaluation reports beside the band.
    """
    k = np.arange(n + 1, dtype=np.float64)
    # log C(n, k) = sum_{i <= k} log((n - i + 1) / i), one cumulative sum instead of 3n lgamma calls
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - k[1:] + 1) - np.log(k[1:]))])
    pmf = np.exp(log_choose + k * math.log(alpha) + (n - k) * math.log1p(-alpha))
    tail = np.cumsum(pmf[::-1])[::-1]
    return np.minimum(np.append(tail, 0.0), 1.0)


def simes_band_lower(n: int, delta: float, k: int | None = None) -> np.ndarray:
    """The Simes band's ``a_1 .. a_n`` (Bates et al. 2023, Sec 3): ``U_(n+1-i) <= 1 - a_i`` for all i w.p. >= 1 - delta.

    ``a_i = delta^(1/k) (prod_{j=i-k+1}^{i} j / prod_{j=n-k+1}^{n} j)^(1/k)`` for
    ``i >= k``, 0 below; ``k`` defaults to ``n // 2``, the paper's choice.
    """
    delta = check_level(delta, "delta")
    n = int(n)
    k = max(1, n // 2) if k is None else min(max(1, int(k)), n)
    log_j = np.log(np.arange(1, n + 1, dtype=np.float64))
    windows = np.convolve(log_j, np.full(k, 1.0 / k), mode="valid")  # mean log j over j = i-k+1 .. i, i = k .. n
    a = np.exp(windows + math.log(delta) / k - log_j[n - k :].mean())
    return np.concatenate([np.zeros(k - 1), a])


def simes_band(n: int, delta: float, k: int | None = None) -> np.ndarray:
    """``b_1 .. b_n``: the calibration-conditional p-value of the plain p-value ``r/(n+1)`` is ``b_r``."""
    return 1.0 - simes_band_lower(n, delta, k)[::-1]


@functools.lru_cache(maxsize=256)
def conditional_rank(n: int, alpha: float, delta: float) -> int:
    """The largest rank r with ``b_r <= alpha`` on the Simes band (0: no flag is safe at this n).

    Flagging ``p <= r / (n + 1)`` is flagging the calibration-conditional p-value
    ``<= alpha``: false-positive rate ``V_(r) <= b_r <= alpha`` with probability
    at least ``1 - delta`` over the calibration draw (and at every alpha at once).
    """
    alpha = check_level(alpha, "alpha")
    band = simes_band(int(n), delta)
    ok = np.nonzero(band <= alpha)[0]
    return int(ok[-1] + 1) if len(ok) else 0


def marginal_rank(n: int, alpha: float) -> int:
    """The k of the plain flag: ``(1 + #{cal >= s}) / (n + 1) <= alpha`` iff ``p <= floor(alpha (n+1)) / (n+1)``."""
    return int(math.floor(check_level(alpha, "alpha") * (n + 1) + 1e-9))


def p_value_threshold(n: int, alpha: float, delta: float | None = None) -> float:
    """The largest p-value that is flagged: ``k / (n + 1)``, k marginal (``delta`` None) or conditional."""
    k = marginal_rank(n, alpha) if delta is None else conditional_rank(n, alpha, delta)
    return k / (n + 1.0)


def score_threshold(calibration_sorted: np.ndarray, k: int) -> float | None:
    """The score above which an image gets ``p <= k/(n+1)``: the k-th largest calibration score (None: k = 0)."""
    if k <= 0:
        return None
    return float(calibration_sorted[len(calibration_sorted) - min(k, len(calibration_sorted))])


@dataclass(frozen=True)
class Threshold:
    """Where one score's flag starts at one alpha: flagged iff ``p_value <= p_value`` iff ``score > score``."""

    alpha: float
    p_value: float
    score: float | None  # None: no image is flagged at this alpha (too few calibration scores)


def thresholds(calibration_sorted: np.ndarray, alpha: float, delta: float | None = None) -> Threshold:
    n = len(calibration_sorted)
    k = marginal_rank(n, alpha) if delta is None else conditional_rank(n, alpha, delta)
    return Threshold(alpha, k / (n + 1.0), score_threshold(calibration_sorted, k))


def threshold_table(
    calibration: dict[str, np.ndarray], delta: float, alphas: tuple[float, ...] = COMMON_ALPHAS
) -> dict[str, list[dict]]:
    """Per score and alpha, where the plain and the calibration-conditional flags start (``GET /models``)."""
    table = {}
    for name, values in calibration.items():
        rows = []
        for alpha in alphas:
            plain, conditional = thresholds(values, alpha), thresholds(values, alpha, delta)
            rows.append(
                {
                    "alpha": alpha,
                    "p_value": plain.p_value,
                    "score": plain.score,
                    "conditional_p_value": conditional.p_value,
                    "conditional_score": conditional.score,
                }
            )
        table[name] = rows
    return table


# --------------------------------------------------------------------------- the rule a request decides by

ALPHA_RULE, CONDITIONAL_RULE, BH_RULE = "alpha", "conditional", "bh"


@dataclass(frozen=True)
class DecisionRule:
    """How one request's p-values become flags.

    ``alpha``: ``p <= level`` per image (the marginal bound; what every client got before).
    ``conditional``: ``p <=`` the calibration-conditional cutoff for ``level`` and ``delta``.
    ``bh``: the Benjamini-Hochberg discoveries at FDR ``level`` over the request's images.
    """

    rule: str
    level: float
    delta: float | None = None

    def cutoff(self, p_values: np.ndarray, n_calibration: int) -> float:
        """The largest p-value flagged in this request (``p <= cutoff``)."""
        if self.rule == BH_RULE:
            return bh_threshold(p_values, self.level)
        if self.rule == CONDITIONAL_RULE:
            return p_value_threshold(n_calibration, self.level, self.delta)
        return self.level

    @property
    def alpha(self) -> float | None:
        """The per-image level, None for a rule that decides the batch as a whole."""
        return None if self.rule == BH_RULE else self.level

    def describe(self, cutoff: float | None) -> dict | None:
        """The response's ``decision`` object; None for the plain alpha rule, so its answers do not change."""
        if self.rule == ALPHA_RULE:
            return None
        described = {"rule": self.rule, "level": self.level}
        if self.delta is not None:
            described["delta"] = self.delta
        described["p_value_threshold"] = cutoff
        return described

    def explain(self, cutoff: float | None) -> str:
        """What a flagged p-value was compared with, for messages."""
        if self.rule == BH_RULE:
            return f"the Benjamini-Hochberg cutoff {cutoff:.4g} at FDR {self.level}"
        if self.rule == CONDITIONAL_RULE:
            return f"the calibration-conditional cutoff {cutoff:.4g} (alpha {self.level}, delta {self.delta})"
        return f"alpha {self.level}"


# --------------------------------------------------------------------------- conformal test martingale


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
