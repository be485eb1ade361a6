"""The OOD decision per image: every score, the one that decides, its p-value, and the flag ``p <= cutoff``.

The one place a p-value becomes a flag (:func:`flags`, for arrays;
:func:`flag_decisions`, per image). :meth:`service.ood.Detector.decide`
calls it with the cutoff ``alpha``; the data plane calls it with the cutoff of
the request's rule (:class:`service.guarantees.DecisionRule`: ``alpha``, the
calibration-conditional cutoff, or Benjamini-Hochberg over the request).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass
class Decision:
    """One image's verdict: every score, the one that decides, its p-value and the flag.

    ``p_value`` and ``ood`` are ``None`` when the bundle carries no calibration:
    an uncalibrated model never gets a made-up flag.
    """

    scores: dict[str, float]
    score: str
    p_value: float | None
    ood: bool | None


def flags(p_values: np.ndarray, cutoff: float) -> np.ndarray:
    """``ood = p <= cutoff`` for a batch of p-values: the comparison every flag comes from."""
    return np.asarray(p_values, dtype=np.float64) <= float(cutoff)


def flag_decisions(
    scores: Mapping[str, np.ndarray],
    score: str,
    p_values: np.ndarray | None,
    cutoff: float | None,
    failed: Collection[int] = (),
) -> list[Decision | None]:
    """Per-image verdicts: every score, the deciding one, its p-value and ``ood = p <= cutoff``.

    The one place a p-value becomes a flag, for :meth:`Detector.decide` (cutoff
    ``alpha``) and the data plane (the request's rule's cutoff); ``failed``
    images, which have no scores, get ``None``.
    """
    names = list(scores)
    if not names:
        return []
    columns = [np.asarray(scores[name]).tolist() for name in names]
    count = len(columns[0])
    p_list = [None] * count if p_values is None else np.asarray(p_values).tolist()
    ood_list = [None] * count if p_values is None else flags(p_values, cutoff).tolist()
    decisions: list[Decision | None] = []
    for i, (row, p, ood) in enumerate(zip(zip(*columns, strict=True), p_list, ood_list, strict=True)):
        if i in failed:
            decisions.append(None)
            continue
        decisions.append(Decision(dict(zip(names, row, strict=True)), score, p, ood))
    return decisions
