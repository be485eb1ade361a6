"""The plan of oodgate-build: levels and slices fit the data, and the options name their directories."""

from __future__ import annotations

import pytest

from training.build_plan import BuildError, BuildOptions, levels_for, slice_spec


def test_presets_fit_the_image_size_and_slices_fit_the_data():
    assert levels_for(28, 28) == 2 and levels_for(32, 32) == 3 and levels_for(24, 24) == 3
    with pytest.raises(BuildError):
        levels_for(7, 7)
    spec = slice_spec(7308)
    assert (spec.holdout, spec.validation, spec.shuffle_seed) == (1462, 512, 0)
    with pytest.raises(BuildError, match="at least"):
        slice_spec(60)


def test_a_build_options_object_names_its_directories(tmp_path):
    options = BuildOptions(images="x", name="m", version="2", models_root=str(tmp_path), runs_root="r")
    assert options.bundle_dir == tmp_path / "m" / "2" and str(options.run_dir) == "r/m/2"
