"""Two guarantees on top of the conformal p-values: FDR per request and calibration-conditional flags.

:mod:`service.conformal` turns a score into the split-conformal p-value
``p = (1 + #{cal >= s}) / (n + 1)``, whose flag ``p <= alpha`` has a *marginal*
false-positive rate of at most alpha on in-distribution images (averaged over
the draw of the calibration set). This module holds the math of two stronger
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

The third guarantee, the anytime-valid drift alarm, is :mod:`service.drift_martingale`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .conformal import check_level

DEFAULT_CONDITIONAL_DELTA = 0.1
COMMON_ALPHAS = (0.01, 0.05, 0.1)  # the levels GET /models shows thresholds for


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
