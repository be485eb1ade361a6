"""What ``oodgate-eval`` measured: each set scored through the bundle's detector, and the metric rows.

:func:`score_set` runs a set through the service's runtime and the bundle's own
:class:`~service.ood.Detector` (``Detector.p_values``: the p-values the
service's worker attaches to every batch), so the flags measured here are the
service's. :class:`Evaluation` is what the report (:mod:`training.report`) and
the targets (:mod:`training.targets`) read; neither is imported here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from service.ood import Detector
from training.metrics import auroc, flag_rate, fpr_at_tpr
from training.ood_sets import ImageSet
from training.scoring import Bundle, run_complexity, run_statistics

ALPHAS = (0.01, 0.05, 0.1)  # the flag levels every report shows unless --alphas says otherwise
IN_DISTRIBUTION = "in-distribution"  # the in-distribution set's name in every row
FPR_AT_TPR = 0.95  # the TPR the FPR column is read at (FPR95, the OOD literature's usual point)


@dataclass
class ScoredSet:
    name: str
    kind: str  # "in", "ood" or "invariant"
    description: str
    images: np.ndarray
    stats: dict[str, np.ndarray]
    complexity: np.ndarray
    scores: dict[str, np.ndarray]
    p_values: dict[str, np.ndarray]
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.images)


@dataclass
class Evaluation:
    bundle: Bundle
    detector: Detector
    sets: list[ScoredSet]
    alphas: tuple[float, ...]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recommended: str | None = None
    worst: dict[str, tuple[float, str]] = field(default_factory=dict)
    # score -> its targets (training.targets.Target), checked once by the evaluation for the report to show
    targets: dict[str, list] = field(default_factory=dict)
    command: str = ""
    seconds: float = 0.0

    @property
    def meets_targets(self) -> set[str]:
        """The scores that meet every target that chooses the default (one not measured does not count against)."""
        return {
            name
            for name, checks in self.targets.items()
            if all(check.met is not False for check in checks if check.chooses)
        }

    @property
    def in_set(self) -> ScoredSet:
        return self.sets[0]

    @property
    def data_source(self) -> str | None:
        """The training data's source as the manifest records it (``fashion-mnist``, ``folder``, ...)."""
        data = self.bundle.manifest.data
        return None if data is None else data.source


def score_set(
    bundle: Bundle, detector: Detector, image_set: ImageSet | ScoredSet, kind: str, batch_size: int, progress: bool
) -> ScoredSet:
    started = time.monotonic()
    stats = run_statistics(bundle, image_set.images, batch_size=batch_size, desc=image_set.name, progress=progress)
    complexity = run_complexity(image_set.images, desc=f"{image_set.name} L(x)", progress=progress)
    scores = detector.score(stats, complexity)
    p_values = detector.p_values(scores)  # what the service's worker attaches to every batch
    return ScoredSet(
        image_set.name,
        kind,
        image_set.description,
        image_set.images,
        stats,
        complexity,
        scores,
        p_values,
        time.monotonic() - started,
    )


def metric_rows(in_set: ScoredSet, sets: list[ScoredSet], alphas: tuple[float, ...]) -> list[dict]:
    rows = []
    for scored in [in_set, *sets]:
        for name, values in scored.scores.items():
            row = {"set": scored.name, "kind": scored.kind, "n": scored.n, "score": name}
            if scored is in_set:
                row["auroc"] = row["fpr95"] = float("nan")
            else:
                row["auroc"] = auroc(in_set.scores[name], values)
                row["fpr95"] = fpr_at_tpr(in_set.scores[name], values, FPR_AT_TPR)
            for alpha in alphas:
                row[f"flag@{alpha:g}"] = flag_rate(scored.p_values[name], alpha)
            rows.append(row)
    return rows


def find_row(rows: list[dict], set_name: str, score: str) -> dict | None:
    """The metric row of ``score`` on ``set_name``; None when that set was not measured."""
    return next((r for r in rows if r["set"] == set_name and r["score"] == score), None)
