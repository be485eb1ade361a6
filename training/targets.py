"""The evaluation's acceptance targets, and the default-score choice they drive.

What each score is held to (:func:`target_checks`), which of those targets
choose the default score, and the choice itself (:func:`recommend`). One module,
so the report (:mod:`training.report`) shows and the evaluation
(:mod:`training.evaluate`) chooses on the same targets; it reads an
:class:`~training.evaluation.Evaluation` and imports neither of them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from training.evaluation import Evaluation, find_row
from training.ood_sets import BUILTIN_SETS

# domain-free sets (training.ood_sets, scope "any") that every score worth choosing flags nearly always
TARGET_SETS_FLAGGED = ("constant", "noise", "vflip", "inverted")
# the bar MNIST is held to under a FashionMNIST flow, and the user's own OOD sets under any flow
TARGET_AUROC, TARGET_FPR95 = 0.99, 0.05
# the share of a flagged set (above) that must be flagged: "nearly always", and 1% slack for a stray image
MIN_FLAGGED = 0.99
# the level the flagged-set targets and the report's headline table are read at (DESIGN.md's default alpha)
REPORT_ALPHA = 0.05
# the realized FPR a level is held to: within 20% of alpha either way (split-conformal promises FPR <= alpha
# on average over calibration draws; one test set is one draw, so the target is a band, not the bound)
FPR_BAND = 0.2
# at alpha 0.01 a test set holds few flags and their relative spread is wide: there the target is only
# FPR <= 2 * alpha, one-sided
SMALL_ALPHA, SMALL_ALPHA_FACTOR = 0.01, 2
AUROC_TIE = 0.01  # AUROC differences under this are noise (see recommend)


@dataclass
class Target:
    """One target of the report: what, whether met (None: not measured), the measured value.

    ``chooses``: whether it enters the default-score choice, i.e. whether it is
    measured on in-distribution data or a domain-free synthetic set only (never on
    the user's OOD sets or the FashionMNIST-specific ones; DESIGN.md).
    """

    target: str
    met: bool | None
    measured: str
    chooses: bool


def _auroc_target(row: dict, label: str) -> Target:
    met = row["auroc"] >= TARGET_AUROC and row["fpr95"] <= TARGET_FPR95
    return Target(
        f"{label}: AUROC >= {TARGET_AUROC} and FPR95 <= {TARGET_FPR95}",
        met,
        f"AUROC {row['auroc']:.4f}, FPR95 {row['fpr95']:.4f}",
        chooses=False,
    )


def target_checks(result: Evaluation, score: str) -> list[Target]:
    """The report's targets for ``score``, defined for every domain.

    Realized FPR against alpha and the domain-free sets flagged (these choose the
    default score); the user's OOD sets held to MNIST's bar; MNIST itself only for
    bundles trained on FashionMNIST. A set that was not measured gives no target.
    """
    rows, checks = result.rows, []
    mnist = find_row(rows, "mnist", score)
    if mnist and result.data_source == "fashion-mnist":
        checks.append(_auroc_target(mnist, "MNIST"))
    for name in TARGET_SETS_FLAGGED:
        row = find_row(rows, name, score)
        column = f"flag@{REPORT_ALPHA:g}"
        if row and column in row:
            met = row[column] >= MIN_FLAGGED
            checks.append(
                Target(
                    f"{name}: >= {100 * MIN_FLAGGED:g}% flagged at alpha {REPORT_ALPHA:g}",
                    met,
                    f"{100 * row[column]:.1f}% flagged",
                    True,
                )
            )
    for scored in result.sets:
        if scored.kind == "ood" and scored.name not in BUILTIN_SETS:
            checks.append(_auroc_target(find_row(rows, scored.name, score), f"your set {scored.name}"))
    in_row = find_row(rows, result.in_set.name, score)
    for alpha in result.alphas:
        rate = in_row.get(f"flag@{alpha:g}")
        if rate is None:
            continue
        if math.isclose(alpha, SMALL_ALPHA):
            met, band = rate <= SMALL_ALPHA_FACTOR * alpha, f"<= {SMALL_ALPHA_FACTOR * alpha:g}"
        else:
            low, high = (1 - FPR_BAND) * alpha, (1 + FPR_BAND) * alpha
            met, band = low <= rate <= high, f"in [{low:.3g}, {high:.3g}]"
        checks.append(Target(f"realized FPR at alpha {alpha:g} {band}", met, f"{rate:.4f}", True))
    return checks


def recommend(
    rows: list[dict],
    score_names: tuple[str, ...],
    tie: float = AUROC_TIE,
    eligible: set[str] | None = None,
    choice_sets: tuple[str, ...] | None = None,
) -> tuple[str | None, dict[str, tuple[float, str]]]:
    """The score whose worst AUROC over the OOD sets in ``choice_sets`` (None: all) is best, among ``eligible``.

    Differences under ``tie`` (about two standard errors of an AUROC on a
    2,000-image set) are noise, not a ranking: such ties go to the next-worst
    set, then to the mean AUROC. ``eligible``: the scores that meet the hard
    targets; a score that misses one (say, lets upside-down images through) is not
    recommended over one that meets them all, however good its worst AUROC.
    ``worst`` is returned for every score either way.
    """
    profiles, worst = {}, {}
    for name in score_names:
        ood = sorted(
            (r["auroc"], r["set"])
            for r in rows
            if r["score"] == name and r["kind"] == "ood" and (choice_sets is None or r["set"] in choice_sets)
        )
        if ood:
            worst[name] = ood[0]
            if not eligible or name in eligible:
                profiles[name] = [value for value, _ in ood]

    def compare(a: str, b: str) -> int:
        for x, y in zip(profiles[a], profiles[b], strict=True):
            if abs(x - y) >= tie:
                return 1 if x > y else -1
        mean_a, mean_b = float(np.mean(profiles[a])), float(np.mean(profiles[b]))
        return (mean_a > mean_b) - (mean_a < mean_b)  # Python bools: numpy's refuse to subtract

    best = max(profiles, key=functools.cmp_to_key(compare)) if profiles else None
    return best, worst
