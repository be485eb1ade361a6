"""What the model's worker computes right after the graph, once per batch: every score and its p-value.

Why here and not per request: the OOD math is vectorised numpy whose cost is
mostly per call, not per image. Done per request, sixteen one-image requests
merged into one batch paid it sixteen times on the event loop; done per batch
in the worker, they pay it once. The PNG complexity ``L(x)`` is computed here
too, from the batch's pixels, so the event loop no longer encodes PNGs; its cost
per image is what remains (``benchmarks/postprocess_bench.py`` measures the whole
step per batch size). The request's own choices (which score decides, its
decision rule) are applied later by the data plane, which only compares each
p-value with the rule's cutoff (:mod:`service.decision`).

The result is a :class:`service.batch_result.BatchResult`: the graph's outputs,
every score and, for a calibrated model, every score's p-value, each keyed by
its own name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .batch_result import BatchResult
from .complexity import complexity_bits
from .ood import Detector

Postprocess = Callable[[Mapping[str, np.ndarray], np.ndarray], BatchResult]


def make_postprocess(detector: Detector) -> Postprocess:
    """The batch function for one model: (runtime stats, uint8 images) -> :class:`BatchResult`."""
    needs_complexity = detector.needs_complexity

    def postprocess(stats: Mapping[str, np.ndarray], images: np.ndarray) -> BatchResult:
        scores = detector.score(stats, complexity_bits(images) if needs_complexity else None)
        p_values = detector.p_values(scores) if detector.fitted else {}
        result = BatchResult.from_stats(stats, scores, p_values)
        result.check_rows(len(images))
        return result

    return postprocess
