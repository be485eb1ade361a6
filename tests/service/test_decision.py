"""The one place a p-value becomes a flag: ``ood = p <= cutoff``, failed images None, no flag without p-values."""

from __future__ import annotations

import numpy as np

from service.decision import Decision, flag_decisions, flags


def test_flags_are_p_at_or_below_the_cutoff_and_failed_images_are_none():
    scores = {"bpd": np.array([1.0, 2.0, 3.0, 4.0]), "dose": np.array([5.0, 6.0, 7.0, 8.0])}
    p_values = np.array([0.01, 0.05, 0.2, 0.5])
    decisions = flag_decisions(scores, "dose", p_values, 0.05, failed={2})
    assert decisions[2] is None
    assert [d.ood for d in decisions if d is not None] == [True, True, False]  # 0.05 <= 0.05 is flagged
    assert decisions[0] == Decision({"bpd": 1.0, "dose": 5.0}, "dose", 0.01, True)
    assert all(isinstance(d.p_value, float) and isinstance(d.scores["bpd"], float) for d in decisions if d)


def test_without_p_values_there_is_no_flag():
    decisions = flag_decisions({"bpd": np.array([1.0, 2.0])}, "bpd", None, None)
    assert [(d.p_value, d.ood) for d in decisions] == [(None, None), (None, None)]


def test_flags_compare_in_double_precision():
    """float32(0.05) is a hair above 0.05: unflagged, because the cutoff is not rounded to float32 first."""
    p = np.array([0.05], dtype=np.float32)
    assert float(p[0]) > 0.05 and (p <= np.float32(0.05)).tolist() == [True]  # what float32 would have said
    assert flags(p, 0.05).tolist() == [False]
    assert flags(np.array([0.05, 0.0500001]), 0.05).tolist() == [True, False]
