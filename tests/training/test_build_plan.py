"""The plan of oodgate-build: levels and slices fit the data, and the options name their directories."""

from __future__ import annotations

import pytest
import yaml

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


def test_without_a_general_mix_the_plan_gives_the_users_flow_every_training_minute(tmp_path, monkeypatch):
    import numpy as np

    import training.build_plan as build_plan
    from training.build_plan import GENERAL_NONE, NO_BACKGROUND_MARK, plan, training_minutes

    monkeypatch.setattr(build_plan, "images_per_second", lambda *args: 100.0)  # the probe, made deterministic
    images = np.random.default_rng(0).integers(0, 256, (400, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", images=images)
    asked, shapes = [], []

    def options(runs: str) -> BuildOptions:
        return BuildOptions(images=str(tmp_path / "train.npz"), name="m", runs_root=str(tmp_path / runs), minutes=30.0)

    def steps_for(minutes: float) -> int:
        return int(100.0 * 60 * minutes / build_plan.BATCH_SIZE)

    with_mix, planned = plan(options("with"), find_mix=lambda shape: shapes.append(shape) or True)
    assert shapes == [(1, 8, 8)] and planned.general != GENERAL_NONE  # asked once the images' shape was known
    assert with_mix.train.max_steps == steps_for(training_minutes(options("with")))  # two thirds of the minutes

    without, planned = plan(options("without"), find_mix=lambda shape: asked.append(shape) or False)
    assert planned.general == GENERAL_NONE and (planned.run_dir / NO_BACKGROUND_MARK).exists()
    every_minute = training_minutes(BuildOptions(images="x", name="m", minutes=30.0, general=GENERAL_NONE))
    assert without.train.max_steps == steps_for(every_minute) > with_mix.train.max_steps
    # resumed: the written plan and its decision stand, and the mix is not looked for again
    again, replanned = plan(options("without"), find_mix=lambda shape: asked.append(shape) or True)
    assert again == without and replanned.general == GENERAL_NONE and asked == [(1, 8, 8)]
    written = yaml.safe_load((planned.run_dir / "config.yaml").read_text())
    assert written["train"]["max_steps"] == without.train.max_steps
