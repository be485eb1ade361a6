"""The three guarantee experiments of ``python -m training.guarantees``, on scores already computed.

Each takes the bundle's sorted calibration scores, in-distribution test scores
and OOD scores (one float per image) and a seeded generator, and returns typed
rows: the false-discovery rate of Benjamini-Hochberg (:func:`fdr_experiment`,
:func:`redrawn_fdr`), the calibration-conditional flag over random splits
(:func:`conditional_experiment`, with the exact shares :func:`realized_share`
and :func:`population_share`), and the drift alarm's false alarms and delays
(:func:`drift_experiment`). Every p-value and decision is the service's own
(:mod:`service.conformal`, :mod:`service.guarantees`, :mod:`service.drift_martingale`);
nothing here reads images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.conformal import conformal_p_values
from service.drift_martingale import DriftMartingale
from service.guarantees import (
    benjamini_hochberg,
    binomial_upper_tail,
    conditional_rank,
    marginal_rank,
    thresholds,
)

FDR_LEVELS = (0.05, 0.1, 0.2)
CONDITIONAL_ALPHAS = (0.01, 0.05, 0.1)
MIXTURES = (0.1, 0.05)
NULL_FIXED = "in-distribution, the bundle's calibration"
NULL_REDRAWN = "in-distribution, calibration redrawn per stream"
MAX_OOD_SHARE = 0.2  # each FDR batch mixes in a uniform 0-20% share of OOD images
MIXTURE_SEED_OFFSET = 1000  # the mixture streams' martingale seeds, apart from the null streams' (0, 1, ...)


@dataclass
class FdrRow:
    q: float
    mean_fdp: float
    mean_power: float
    mean_discoveries: float
    alpha_mean_fdp: float  # the per-image flag p <= alpha at alpha = q, on the same batches
    alpha_mean_power: float
    redrawn_mean_fdp: float | None = None  # BH with the calibration set redrawn per batch, as the guarantee is stated


def mixed_batch(in_scores: np.ndarray, ood_scores: np.ndarray, size: int, rng) -> tuple[np.ndarray, int]:
    """``size`` scores, a uniform 0-MAX_OOD_SHARE share of them OOD (last), each part drawn without replacement."""
    n_ood = int(round(rng.uniform(0.0, MAX_OOD_SHARE) * size))
    in_part = in_scores[rng.choice(len(in_scores), size - n_ood, replace=False)]
    return np.concatenate([in_part, ood_scores[rng.choice(len(ood_scores), n_ood, replace=False)]]), n_ood


def redrawn_fdr(
    calibration: np.ndarray, in_scores: np.ndarray, ood_scores: np.ndarray, batches: int, size: int, rng
) -> dict[float, float]:
    """Mean FDP of BH per q when every batch gets a fresh calibration set drawn from the pool "calibration + test".

    BH's bound is over the draw of the calibration set *and* the batch; the main
    experiment holds the bundle's one calibration set fixed, which can sit above or
    below its average. The batch's in-distribution images come from what the
    calibration draw left over.
    """
    pool, n = np.concatenate([calibration, in_scores]), len(calibration)
    fdp: dict[float, list[float]] = {q: [] for q in FDR_LEVELS}
    for _ in range(batches):
        order = rng.permutation(len(pool))
        cal, rest = np.sort(pool[order[:n]]), pool[order[n:]]
        scores, n_ood = mixed_batch(rest, ood_scores, size, rng)
        p = conformal_p_values(cal, scores)
        for q in FDR_LEVELS:
            flags = benjamini_hochberg(p, q)
            fdp[q].append(float(flags[: size - n_ood].sum()) / max(int(flags.sum()), 1))
    return {q: float(np.mean(values)) for q, values in fdp.items()}


def fdr_experiment(
    calibration: np.ndarray, in_scores: np.ndarray, ood_scores: np.ndarray, batches: int, size: int, rng
) -> list[FdrRow]:
    outcomes = {q: {"fdp": [], "power": [], "found": [], "a_fdp": [], "a_power": []} for q in FDR_LEVELS}
    for _ in range(batches):
        scores, n_ood = mixed_batch(in_scores, ood_scores, size, rng)
        is_ood = np.arange(size) >= size - n_ood
        p = conformal_p_values(calibration, scores)
        for q in FDR_LEVELS:
            for flags, fdp_key, power_key in ((benjamini_hochberg(p, q), "fdp", "power"), (p <= q, "a_fdp", "a_power")):
                found = int(flags.sum())
                outcomes[q][fdp_key].append(float((flags & ~is_ood).sum()) / max(found, 1))
                if n_ood:
                    outcomes[q][power_key].append(float((flags & is_ood).sum()) / n_ood)
                if fdp_key == "fdp":
                    outcomes[q]["found"].append(found)
    return [
        FdrRow(
            q,
            float(np.mean(o["fdp"])),
            float(np.mean(o["power"])),
            float(np.mean(o["found"])),
            float(np.mean(o["a_fdp"])),
            float(np.mean(o["a_power"])),
        )
        for q, o in outcomes.items()
    ]


def population_share(n: int, k: int, alpha: float) -> float:
    """P(the flag's FPR on the population > alpha) = P(Beta(k, n+1-k) > alpha) = P(Bin(n, alpha) < k): the guarantee."""
    return float(1.0 - binomial_upper_tail(n, alpha)[k])


def realized_share(n: int, m: int, k: int, alpha: float) -> float:
    """P(more than alpha * m of m test images are flagged), for a random split of n + m exchangeable scores.

    The flag starts at the k-th largest calibration score; the number X of test
    scores above it is negative hypergeometric: ``P(X = x) = C(x+k-1, k-1)
    C(N-x-k, n-k) / C(N, n)``. This is what the split experiment measures; it
    exceeds :func:`population_share` by the test set's own sampling noise.
    """
    if k <= 0:
        return 0.0
    N = n + m

    def log_choose(a: float, b: float) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    total = log_choose(N, n)
    x = np.arange(m + 1)
    log_pmf = np.array([log_choose(i + k - 1, k - 1) + log_choose(N - i - k, n - k) - total for i in x])
    return float(np.exp(log_pmf)[x > alpha * m].sum())


@dataclass
class ConditionalRow:
    alpha: float
    delta: float
    share_plain_above: float  # splits whose realized FPR exceeds alpha, plain flag
    share_conditional_above: float
    expected_plain_above: float  # the same shares, exact, for this experiment (negative hypergeometric)
    expected_conditional_above: float
    population_conditional_above: float  # P(the population FPR > alpha): what the guarantee bounds by delta
    mean_fpr_plain: float
    mean_fpr_conditional: float
    ood_flagged_plain: float  # the price: OOD images flagged at the bundle's own calibration
    ood_flagged_conditional: float


def conditional_experiment(
    calibration: np.ndarray, in_scores: np.ndarray, ood_scores: np.ndarray, splits: int, delta: float, rng
) -> list[ConditionalRow]:
    pool = np.concatenate([calibration, in_scores])
    n, m = len(calibration), len(in_scores)
    fpr = {(a, kind): [] for a in CONDITIONAL_ALPHAS for kind in ("plain", "conditional")}
    for _ in range(splits):
        order = rng.permutation(len(pool))
        cal, test = np.sort(pool[order[:n]]), pool[order[n:]]
        p = conformal_p_values(cal, test)
        for alpha in CONDITIONAL_ALPHAS:
            fpr[(alpha, "plain")].append(float(np.mean(p <= alpha)))
            fpr[(alpha, "conditional")].append(float(np.mean(p <= thresholds(cal, alpha, delta).p_value)))
    p_ood = conformal_p_values(np.sort(calibration), ood_scores)
    rows = []
    for alpha in CONDITIONAL_ALPHAS:
        plain, conditional = np.array(fpr[(alpha, "plain")]), np.array(fpr[(alpha, "conditional")])
        rows.append(
            ConditionalRow(
                alpha,
                delta,
                float(np.mean(plain > alpha)),
                float(np.mean(conditional > alpha)),
                realized_share(n, m, marginal_rank(n, alpha), alpha),
                realized_share(n, m, conditional_rank(n, alpha, delta), alpha),
                population_share(n, conditional_rank(n, alpha, delta), alpha),
                float(plain.mean()),
                float(conditional.mean()),
                float(np.mean(p_ood <= alpha)),
                float(np.mean(p_ood <= thresholds(np.sort(calibration), alpha, delta).p_value)),
            )
        )
    return rows


@dataclass
class DriftRow:
    stream: str
    streams: int
    length: int
    change_at: int | None
    alarms: int  # streams whose alarm latched (null streams: false alarms)
    early_alarms: int  # alarms before the change (false alarms on mixture streams)
    delay_median: float | None
    delay_p90: float | None
    delay_max: int | None
    max_log10_wealth_median: float


def drift_run(calibration: np.ndarray, stream: np.ndarray, delta: float, seed: int) -> tuple[int | None, float]:
    test = DriftMartingale(calibration, delta, seed=seed)
    test.observe(stream)
    state = test.state()
    return state.alarm_at, test.martingale.max_log10_wealth


def drift_experiment(
    calibration: np.ndarray,
    in_scores: np.ndarray,
    ood_scores: np.ndarray,
    streams: int,
    length: int,
    prefix: int,
    delta: float,
    rng,
) -> list[DriftRow]:
    rows = []
    pool, n = np.concatenate([calibration, in_scores]), len(calibration)
    for name in (NULL_FIXED, NULL_REDRAWN):
        alarms, wealth = [], []
        for i in range(streams):
            if name == NULL_FIXED:  # conditional on the bundle's calibration set
                cal, stream = calibration, in_scores[rng.permutation(len(in_scores))[:length]]
            else:  # what the guarantee is about: the calibration set drawn too
                order = rng.permutation(len(pool))
                cal, stream = np.sort(pool[order[:n]]), pool[order[n : n + length]]
            alarm_at, top = drift_run(cal, stream, delta, i)
            alarms.append(alarm_at)
            wealth.append(top)
        fired = sum(a is not None for a in alarms)
        rows.append(DriftRow(name, streams, len(stream), None, fired, fired, None, None, None, np.median(wealth)))
    for share in MIXTURES:
        delays, early, wealth = [], 0, []
        for i in range(streams):
            after = length - prefix
            is_ood = rng.random(after) < share
            in_order, ood_order = rng.permutation(len(in_scores)), rng.permutation(len(ood_scores))
            tail = np.empty(after)
            tail[~is_ood] = in_scores[in_order[prefix : prefix + int((~is_ood).sum())]]
            tail[is_ood] = ood_scores[ood_order[: int(is_ood.sum())]]
            stream = np.concatenate([in_scores[in_order[:prefix]], tail])
            alarm_at, top = drift_run(calibration, stream, delta, MIXTURE_SEED_OFFSET + i)
            wealth.append(top)
            if alarm_at is not None and alarm_at <= prefix:
                early += 1
            elif alarm_at is not None:
                delays.append(alarm_at - prefix)
        d = np.array(delays)
        rows.append(
            DriftRow(
                f"{share:.0%} OOD after {prefix} in-distribution",
                streams,
                length,
                prefix,
                len(delays) + early,
                early,
                float(np.median(d)) if len(d) else None,
                float(np.percentile(d, 90)) if len(d) else None,
                int(d.max()) if len(d) else None,
                float(np.median(wealth)),
            )
        )
    return rows
