"""AUROC, FPR at 95% TPR and the flag rate on cases whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import auroc, flag_rate, fpr_at_tpr


def test_auroc_and_fpr95_on_known_cases():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    assert auroc(np.array([0.0, 2.0]), np.array([1.0, np.nan])) == 0.75  # nan is 'most OOD'
    in_scores = np.arange(100.0)
    assert fpr_at_tpr(in_scores, np.full(20, 1000.0)) == 0.0
    assert fpr_at_tpr(in_scores, np.arange(100.0)) == pytest.approx(0.95)
    assert flag_rate(np.array([0.01, 0.2, 0.05]), 0.05) == pytest.approx(2 / 3)
