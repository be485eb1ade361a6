"""The split-conformal p-value formula and the one check of a probability level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.conformal import check_level, conformal_p_values


def test_conformal_p_value_formula_and_ties():
    cal = np.sort(np.array([1.0, 2.0, 2.0, 3.0]))
    np.testing.assert_allclose(conformal_p_values(cal, np.array([0.0, 2.0, 2.5, 9.0])), [1.0, 4 / 5, 2 / 5, 1 / 5])


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_a_level_outside_the_open_unit_interval_is_refused_by_name(value):
    with pytest.raises(ValueError, match="fdr must lie strictly between 0 and 1"):
        check_level(value, "fdr")


def test_a_level_inside_is_returned_as_a_float():
    assert check_level(1 / 4) == 0.25 and isinstance(check_level(np.float32(0.5)), float)
