"""L(x) is in bits, on the bits-per-dimension scale of ``bpd``: a bytes slip would be caught here."""

import numpy as np
import pytest

from service.complexity import complexity_bits
from service.ood import Detector


def test_uniform_noise_costs_about_eight_bits_per_dim():
    noise = np.random.default_rng(0).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    per_dim = complexity_bits(noise) / noise[0].size
    # incompressible: 8 bits per pixel plus PNG's framing; bytes instead of bits would give ~1.1
    assert np.all(per_dim > 7.9) and np.all(per_dim < 9.5)


def test_constant_images_are_cheap_and_structure_sits_between():
    constant = np.full((3, 1, 28, 28), 200, np.uint8)
    yy, xx = np.mgrid[:28, :28]
    blob = (255 * np.exp(-((yy - 14) ** 2 + (xx - 14) ** 2) / 40)).astype(np.uint8)[None, None]
    noise = np.random.default_rng(1).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
    c, b, n = complexity_bits(constant)[0], complexity_bits(blob)[0], complexity_bits(noise)[0]
    assert c < b < n
    assert c / 784 < 1.0
    np.testing.assert_array_equal(complexity_bits(constant), complexity_bits(constant)[:1].repeat(3))


def test_rgb_and_dtype_and_shape_checks():
    rgb = np.random.default_rng(2).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    assert complexity_bits(rgb).dtype == np.float64 and complexity_bits(rgb).shape == (2,)
    with pytest.raises(ValueError):
        complexity_bits(rgb.astype(np.float32))
    with pytest.raises(ValueError):
        complexity_bits(rgb[0])


def test_complexity_score_is_bpd_minus_bits_per_dim_and_a_units_slip_breaks_it():
    """A model that spends exactly 8 bits per dimension on everything: noise is then
    'explained' by its complexity (score ~ 0) while a constant image is not (score ~ 7).
    With L(x) in bytes the ranking flips: the guard against a silent AUROC ~ 0."""
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (8, 1, 28, 28), dtype=np.uint8)
    constant = np.full((8, 1, 28, 28), 9, np.uint8)
    images = np.concatenate([noise, constant])
    stats = {"bpd": np.full(16, 8.0)}
    detector = Detector(dims=784, levels=2)
    bits = complexity_bits(images)
    scores = detector.score(stats, bits, ["complexity"])["complexity"]
    assert np.all(np.abs(scores[:8]) < 1.5)
    assert np.all(scores[8:] > 6.0)
    slipped = detector.score(stats, bits / 8, ["complexity"])["complexity"]  # bytes, not bits
    assert np.all(slipped[:8] > 6.0)  # now even noise looks 'too simple': the test above catches it
