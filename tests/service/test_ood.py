"""The detector: each score on synthetic statistics where the right answer is known, its p-values and flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as st

from service.decision import Decision
from service.ood import CalibrationError, Detector, UnknownScoreError, fit_and_calibration_parts
from service.scores import BACKGROUND_BPD, COMBINED_PARTS, VFLIP_BPD
from training.metrics import auroc

from .flow_stats import D, make_stats


def fitted(rng, n=2000, background=True, density="kde") -> Detector:
    stats, complexity = make_stats(n, rng)
    detector = Detector(D, 2, background=background, dose_density=density)
    return detector.fit(stats, complexity, seed=1, combined=True)


def aurocs(detector, rng, **ood_kwargs) -> dict[str, float]:
    s_in, c_in = make_stats(1000, rng)
    s_out, c_out = make_stats(1000, rng, **ood_kwargs)
    a, b = detector.score(s_in, c_in), detector.score(s_out, c_out)
    return {name: auroc(a[name], b[name]) for name in a}


def test_bpd_catches_an_ood_set_with_lower_likelihood():
    rng = np.random.default_rng(0)
    result = aurocs(fitted(rng), rng, gap=1.2)  # 2 bits/dim worse at equal complexity
    assert result["bpd"] > 0.99 and result["complexity"] > 0.99


def test_typicality_catches_too_likely_images_that_bpd_ranks_as_most_normal():
    rng = np.random.default_rng(1)
    result = aurocs(fitted(rng), rng, complexity_bpd=2.0, gap=-0.8)  # simple images, like MNIST or constants
    assert result["bpd"] < 0.01
    assert result["typicality"] > 0.99


def test_complexity_catches_simple_images_that_the_flow_explains_too_badly():
    rng = np.random.default_rng(2)
    # MNIST-like: fewer bits than the in-distribution images, yet more than their complexity warrants
    result = aurocs(fitted(rng), rng, complexity_bpd=2.5, gap=-0.3)
    assert result["bpd"] < 0.1
    assert result["complexity"] > 0.99


@pytest.mark.parametrize("density", ["kde", "gaussian", "gmm"])
def test_dose_sees_a_shift_that_leaves_bpd_and_complexity_unchanged(density):
    rng = np.random.default_rng(3)
    result = aurocs(fitted(rng, density=density), rng, det_shift=0.1)  # log-det up, log p(z) down, same log p(x)
    for blind in ("bpd", "typicality", "complexity", "likelihood_ratio"):
        assert 0.4 < result[blind] < 0.6, (blind, result[blind])
    assert result["dose"] > 0.99


def test_dose_with_latent_energy_sees_a_too_small_latent_that_log_p_z_hides():
    rng = np.random.default_rng(13)
    stats, complexity = make_stats(2000, rng)
    plain = Detector(D, 2, dose_density="gmm").fit(stats, complexity, seed=1)
    energy = Detector(D, 2, latent_energy=True, dose_density="gmm").fit(stats, complexity, seed=1)
    zeroed = {"plain": aurocs(plain, rng, energy_level1=0.05), "energy": aurocs(energy, rng, energy_level1=0.05)}
    assert 0.4 < zeroed["plain"]["dose"] < 0.6  # log p(z), log-det and L(x) are unchanged: dose alone is blind
    assert zeroed["energy"]["dose"] > 0.99
    # and on in-distribution-like data the extra feature costs nothing: both rank a det shift the same
    assert aurocs(energy, rng, det_shift=0.1)["dose"] > 0.99


def test_latent_energy_needs_the_graph_output():
    rng = np.random.default_rng(14)
    stats, complexity = make_stats(200, rng)
    detector = Detector(D, 2, latent_energy=True, dose_density="gaussian").fit(stats, complexity, seed=1)
    del stats["latent_energy_levels"]
    with pytest.raises(ValueError, match="latent_energy_levels"):
        detector.score(stats, complexity)


def test_combined_keeps_what_complexity_and_dose_each_catch():
    rng = np.random.default_rng(12)
    detector = fitted(rng, background=False, density="gaussian")  # no background: complexity is a default part
    assert detector.combined_parts == COMBINED_PARTS
    simple = aurocs(detector, rng, complexity_bpd=2.5, gap=-0.3)  # complexity's case
    shifted = aurocs(detector, rng, det_shift=0.1)  # dose's case
    assert simple["combined"] > 0.99 and shifted["combined"] > 0.99
    assert simple["bpd"] < 0.1 and 0.4 < shifted["complexity"] < 0.6


def test_likelihood_ratio_catches_what_the_background_model_explains_as_well():
    rng = np.random.default_rng(4)
    detector = fitted(rng)
    result = aurocs(detector, rng, background_gap=0.5)
    assert 0.4 < result["bpd"] < 0.6 and 0.4 < result["dose"] < 0.6 and 0.4 < result["complexity"] < 0.6
    assert result["likelihood_ratio"] > 0.99
    # with a background flow, combined joins the ratio (in place of complexity) by default: it keeps what
    # only the ratio sees
    assert detector.combined_parts == ("dose", "likelihood_ratio")
    assert result["combined"] > 0.99


def test_p_values_are_uniform_on_exchangeable_data():
    """Marginally over calibration draws, a conformal p-value is uniform on {1/(n+1), ..., 1}.

    Many independent small draws (fixed seed), one fresh image each; a chi-square
    test of the ranks per score, and the flag rate at each alpha within a
    binomial 99.9% interval."""
    rng = np.random.default_rng(5)
    trials, n = 1500, 100  # 40 images fit, 60 calibrate the fitted scores; 100 calibrate the others
    ranks: dict[str, list[float]] = {}
    for _ in range(trials):
        stats, complexity = make_stats(n + 1, rng)
        holdout = {k: v[:n] for k, v in stats.items()}
        detector = Detector(D, 2, background=True)
        detector.fit(holdout, complexity[:n], seed=int(rng.integers(1 << 30)), combined=True)
        new = {k: v[n:] for k, v in stats.items()}
        for name in detector.score_names:
            ranks.setdefault(name, []).append(float(detector.p_value(new, complexity[n:], name)[0]))
    for name, p in ranks.items():
        p = np.array(p)
        n_cal = 60 if name in ("typicality", "dose", "combined") else 100
        levels = np.rint(p * (n_cal + 1)).astype(int)  # 1..n_cal+1, uniform
        counts = np.bincount(np.minimum((levels - 1) * 10 // (n_cal + 1), 9), minlength=10)
        expected = np.array([np.sum(((np.arange(1, n_cal + 2) - 1) * 10 // (n_cal + 1)) == b) for b in range(10)])
        chi = st.chisquare(counts, expected * trials / (n_cal + 1))
        assert chi.pvalue > 0.001, (name, counts)
        for alpha in (0.05, 0.1, 0.2):
            exact = np.floor(alpha * (n_cal + 1)) / (n_cal + 1)
            low, high = st.binom.interval(0.999, trials, exact)
            assert low <= np.sum(p <= alpha) <= high, (name, alpha)


def test_realized_false_positive_rate_is_near_alpha_on_fresh_in_distribution_images():
    rng = np.random.default_rng(6)
    detector = fitted(rng, n=4000)
    stats, complexity = make_stats(8000, rng)
    for alpha in (0.01, 0.05, 0.1):
        rate = np.mean(detector.predict(stats, complexity, alpha=alpha, score="dose")["is_ood"])
        # the spread of the calibration quantile plus that of the test sample, four standard deviations
        tolerance = 4 * np.sqrt(alpha * (1 - alpha) * (1 / 2400 + 1 / 8000))
        assert abs(rate - alpha) <= tolerance, (alpha, rate)


def test_non_finite_statistics_are_the_most_unusual_not_a_crash():
    rng = np.random.default_rng(7)
    detector = fitted(rng, n=500)
    stats, complexity = make_stats(2, rng)
    stats["bpd"][0] = np.nan
    result = detector.predict(stats, complexity, alpha=0.05, score="bpd")
    assert result["scores"]["bpd"][0] == np.inf
    assert result["p_value"][0] == pytest.approx(1 / 501) and result["is_ood"][0]


def test_uncalibrated_detector_gives_raw_scores_and_never_a_flag():
    rng = np.random.default_rng(8)
    detector = Detector(D, 2)
    assert detector.score_names == ("bpd", "complexity")
    assert detector.needs_complexity and not detector.needs_background
    stats, complexity = make_stats(3, rng)
    decisions = detector.decide(stats, complexity, None, 0.05)
    assert all(isinstance(d, Decision) and d.p_value is None and d.ood is None for d in decisions)
    assert set(decisions[0].scores) == {"bpd", "complexity"}
    with pytest.raises(UnknownScoreError, match="no calibration"):
        detector.decide(stats, complexity, "dose", 0.05)
    with pytest.raises(UnknownScoreError, match="no background"):
        detector.decide(stats, complexity, "likelihood_ratio", 0.05)
    with pytest.raises(UnknownScoreError, match="no such score"):
        detector.decide(stats, complexity, "entropy", 0.05)
    with pytest.raises(CalibrationError):
        detector.p_value(stats, complexity, "bpd")


def test_decide_checks_alpha_and_inputs():
    rng = np.random.default_rng(9)
    detector = fitted(rng, n=300)
    stats, complexity = make_stats(4, rng)
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            detector.decide(stats, complexity, None, bad)
    with pytest.raises(ValueError, match="complexity"):
        detector.decide(stats, None, None, 0.05)
    no_background = {k: v for k, v in stats.items() if k != BACKGROUND_BPD}
    with pytest.raises(ValueError, match=BACKGROUND_BPD):
        detector.decide(no_background, complexity, None, 0.05)
    decisions = detector.decide(stats, complexity, "typicality", 0.5)
    assert [d.score for d in decisions] == ["typicality"] * 4
    assert set(decisions[0].scores) == {"bpd", "typicality", "complexity", "dose", "combined", "likelihood_ratio"}
    assert all(d.ood == (d.p_value <= 0.5) for d in decisions)
    json.dumps([d.__dict__ for d in decisions])  # plain Python types, ready for a response


def test_fit_refuses_what_cannot_be_calibrated():
    rng = np.random.default_rng(10)
    stats, complexity = make_stats(15, rng)
    with pytest.raises(CalibrationError, match="too few"):
        Detector(D, 2).fit(stats, complexity)
    stats, complexity = make_stats(200, rng)
    stats["log_pz_levels"][3, 0] = np.inf
    with pytest.raises(CalibrationError, match="non-finite"):
        Detector(D, 2).fit(stats, complexity)


def test_the_calibration_part_is_the_one_the_fitted_detector_calibrated_on():
    rng = np.random.default_rng(12)
    stats, complexity = make_stats(300, rng)
    detector = Detector(D, 2).fit(stats, complexity, fit_fraction=0.3, seed=5)
    fit_part, calibration_part = fit_and_calibration_parts(300, 0.3, 5)
    assert (len(fit_part), len(calibration_part)) == (90, 210)
    assert np.array_equal(np.union1d(fit_part, calibration_part), np.arange(300))
    raw = detector.score({key: np.asarray(value)[calibration_part] for key, value in stats.items()},
                         complexity[calibration_part])["dose"]  # fmt: skip
    np.testing.assert_allclose(np.sort(raw), detector.calibration["dose"])
    assert not np.array_equal(fit_and_calibration_parts(300, 0.3, 6)[1], calibration_part)
    np.testing.assert_array_equal(detector.calibration_part(300), calibration_part)


def test_orientation_catches_flipped_images_that_every_other_score_misses():
    """Upside-down images: same likelihood, same complexity, but the flow prefers their flip."""
    rng = np.random.default_rng(13)
    stats, complexity = make_stats(2000, rng)
    detector = Detector(D, 2, orientation=True, dose_density="gaussian").fit(stats, complexity, seed=1, combined=True)
    assert detector.combined_parts == ("dose", "orientation")
    assert detector.score_names == ("bpd", "typicality", "complexity", "orientation", "dose", "combined")
    s_in, c_in = make_stats(1000, rng)
    s_out, c_out = make_stats(1000, rng, flip_gap=+0.17)  # the mirror image of the in-distribution gap
    a, b = detector.score(s_in, c_in), detector.score(s_out, c_out)
    np.testing.assert_allclose(a["orientation"], s_in["bpd"].astype(np.float64) - s_in[VFLIP_BPD], rtol=1e-12)
    result = {name: auroc(a[name], b[name]) for name in a}
    for blind in ("bpd", "typicality", "complexity"):
        assert 0.4 < result[blind] < 0.6, (blind, result[blind])
    assert result["orientation"] > 0.98 and result["combined"] > 0.95 and result["dose"] > 0.9
    flagged = detector.predict(s_out, c_out, alpha=0.05, score="orientation")["is_ood"].mean()
    realized = detector.predict(s_in, c_in, alpha=0.05, score="orientation")["is_ood"].mean()
    assert flagged > 0.9 and realized < 0.08


def test_orientation_needs_the_flag_and_the_flipped_pass():
    rng = np.random.default_rng(14)
    stats, complexity = make_stats(300, rng)
    plain = Detector(D, 2).fit(stats, complexity, seed=0, combined=True)
    assert "orientation" not in plain.score_names and plain.combined_parts == COMBINED_PARTS
    assert plain.density.dims == 5  # the flipped bpd in the stats does not sneak into dose
    with pytest.raises(UnknownScoreError, match="orientation"):
        plain.decide(stats, complexity, "orientation", 0.05)
    with pytest.raises(ValueError, match="cannot use 'orientation'"):
        Detector(D, 2).fit(stats, complexity, combined=True, combined_parts=("dose", "orientation"))
    oriented = Detector(D, 2, orientation=True).fit(stats, complexity, seed=0, combined=True)
    assert oriented.density.dims == 6
    no_flip = {k: v for k, v in stats.items() if k != VFLIP_BPD}
    with pytest.raises(ValueError, match=VFLIP_BPD):
        oriented.decide(no_flip, complexity, None, 0.05)
    with pytest.raises(ValueError, match=VFLIP_BPD):
        Detector(D, 2, orientation=True).fit(no_flip, complexity)
    assert Detector(D, 2, orientation=True).score_names == ("bpd", "complexity", "orientation")  # no fit needed


def test_combined_rule_max_takes_the_larger_and_sum_adds_the_tail_evidence():
    """Fisher's rule adds the parts' -log tail probabilities; max keeps the larger; anything else is refused."""
    from service.scores import tail_evidence

    rng = np.random.default_rng(17)
    stats, complexity = make_stats(400, rng)
    new, new_complexity = make_stats(40, rng, gap=0.2)
    raw = {}
    for rule in ("max", "sum"):
        detector = Detector(D, 2, dose_density="gaussian").fit(
            stats, complexity, seed=1, combined=True, combine_rule=rule
        )
        parts = detector.score(new, new_complexity, list(detector.combined_parts))
        evidence = np.stack([tail_evidence(detector.reference[p], parts[p]) for p in detector.combined_parts])
        raw[rule] = detector.score(new, new_complexity, ["combined"])["combined"]
        expected = evidence.sum(axis=0) if rule == "sum" else evidence.max(axis=0)
        np.testing.assert_allclose(raw[rule], expected, rtol=1e-12)
    assert np.all(raw["sum"] >= raw["max"])  # evidence is never negative
    with pytest.raises(ValueError, match="combine_rule"):
        Detector(D, 2).fit(stats, complexity, combined=True, combine_rule="mean")
