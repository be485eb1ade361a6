"""Detection metrics for the evaluation report, in plain numpy (no scikit-learn in the product).

Convention throughout: higher score = more out-of-distribution; the OOD set is
the positive class and the in-distribution test set the negative one.
"""

from __future__ import annotations

import numpy as np

from service.decision import flags


def _clean(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(scores), np.inf, scores)


def auroc(in_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """P(ood score > in score) + 1/2 P(tie): the Mann-Whitney form, exact with ties."""
    neg, pos = np.sort(_clean(in_scores)), _clean(ood_scores)
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(neg) * len(pos)))


def fpr_at_tpr(in_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of in-distribution images flagged at the loosest threshold that flags ``tpr`` of the OOD set."""
    neg, pos = _clean(in_scores), np.sort(_clean(ood_scores))
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    # flag s >= t; the largest t with #{pos >= t} >= tpr * n_pos is the k-th largest positive
    k = int(np.ceil(tpr * len(pos)))
    threshold = pos[len(pos) - k]
    return float(np.mean(neg >= threshold))


def flag_rate(p_values: np.ndarray, alpha: float) -> float:
    """Share flagged at ``alpha``, by the service's own comparison (:func:`service.decision.flags`)."""
    return float(np.mean(flags(p_values, alpha))) if len(p_values) else float("nan")
