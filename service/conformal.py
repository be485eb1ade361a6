"""Split-conformal p-values: the one formula that turns a score into a p-value, and the level check.

``p = (1 + #{cal >= s}) / (n + 1)`` against the scores of ``n`` held-out
in-distribution images the model never trained on; flagging ``p <= alpha``
then bounds the false-positive rate on in-distribution images by ``alpha``
whatever the score is. The service, calibration, evaluation and the
guarantee checks all take their p-values from here, so they cannot disagree.
"""

from __future__ import annotations

import math

import numpy as np

CONFORMAL_METHOD = "split-conformal"  # how calibration files and GET /models name this method
DEFAULT_ALPHA = 0.05


def check_level(value: float, name: str = "alpha") -> float:
    """A probability level strictly inside (0, 1) (alpha, an FDR level, a drift delta), as a float."""
    value = float(value)
    if math.isnan(value) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return value


def conformal_p_values(calibration_sorted: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(1 + #{cal >= s}) / (n + 1)`` for each score, against sorted calibration scores."""
    n = len(calibration_sorted)
    at_least = n - np.searchsorted(calibration_sorted, scores, side="left")
    return (1.0 + at_least) / (n + 1.0)
