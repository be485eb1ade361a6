"""What the model's worker computes right after the graph, once per batch: every score and its p-value.

Why here and not per request: the OOD math is vectorised numpy whose cost is
mostly per call, not per image. Done per request, sixteen one-image requests
merged into one batch paid it sixteen times on the event loop; done per batch
in the worker, they pay it once. The PNG complexity ``L(x)`` is computed here
too, from the batch's pixels, so the event loop no longer encodes PNGs; its cost
per image is what remains (``benchmarks/postprocess_bench.py`` measures the whole
step per batch size). The request's own choices (which score decides, ``alpha``)
are applied later by the data plane, which only compares ``p_value <= alpha``.

The outputs join the graph's in the batch results under ``score/<name>`` and,
for a calibrated model, ``p_value/<name>``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .complexity import complexity_bits
from .ood import Detector

SCORE_PREFIX = "score/"
P_VALUE_PREFIX = "p_value/"

Postprocess = Callable[[dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]


def score_key(name: str) -> str:
    return SCORE_PREFIX + name


def p_value_key(name: str) -> str:
    return P_VALUE_PREFIX + name


def make_postprocess(detector: Detector) -> Postprocess:
    """The batch function for one model: (graph outputs, uint8 images) -> scores and p-values."""
    needs_complexity = detector.needs_complexity

    def postprocess(stats: dict[str, np.ndarray], images: np.ndarray) -> dict[str, np.ndarray]:
        scores = detector.score(stats, complexity_bits(images) if needs_complexity else None)
        out = {score_key(name): values for name, values in scores.items()}
        if detector.fitted:
            out.update({p_value_key(name): values for name, values in detector.p_values(scores).items()})
        return out

    return postprocess
