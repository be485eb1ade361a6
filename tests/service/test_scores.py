"""The pure score functions: tail evidence keeps extreme images ordered, and DoSE's features match their names."""

from __future__ import annotations

import numpy as np

from service.scores import dose_feature_names, dose_features, finite_or_inf, reference_spread, tail_evidence

from .flow_stats import D, make_stats


def test_tail_evidence_grows_past_the_reference_maximum_in_units_of_its_spread():
    reference = np.sort(np.arange(1.0, 101.0))  # IQR 49.5
    assert reference_spread(reference) == 49.5
    beyond = tail_evidence(reference, np.array([100.0, 149.5, 199.0]))
    np.testing.assert_allclose(np.diff(beyond), [1.0, 1.0])  # one spread past the max: one more unit
    inside = tail_evidence(reference, np.array([10.0, 50.0, 90.0]))
    assert np.all(np.diff(inside) > 0) and inside[0] >= 0.0
    assert tail_evidence(reference, np.array([np.nan]))[0] == np.inf
    assert reference_spread(np.ones(5)) == 1.0  # a reference with no spread still gives a unit


def test_dose_features_have_one_named_column_each_with_and_without_orientation():
    stats, complexity = make_stats(20, np.random.default_rng(3))
    for orientation in (False, True):
        features = dose_features(stats, complexity, D, orientation)
        assert features.shape == (20, len(dose_feature_names(2, orientation)))
    np.testing.assert_allclose(features[:, 4], complexity / D)  # L(x)/D after the two levels' two features
    np.testing.assert_allclose(features[:, 5], stats["bpd"].astype(np.float64) - stats["vflip_bpd"])


def test_non_finite_scores_rank_as_most_unusual():
    np.testing.assert_array_equal(finite_or_inf(np.array([1.0, np.nan, -np.inf])), [1.0, np.inf, np.inf])
