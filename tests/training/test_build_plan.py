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


def test_without_a_general_mix_the_background_minutes_go_to_the_users_flow(tmp_path):
    from training.build_plan import (
        GENERAL_NONE,
        NO_BACKGROUND_MARK,
        give_background_minutes_back,
        schedule,
        training_minutes,
    )
    from training.config import DataConfig, RunConfig, TrainConfig

    options = BuildOptions(images="x", name="m", runs_root=str(tmp_path), minutes=30.0)
    share = training_minutes(options) / training_minutes(
        BuildOptions(images="x", name="m", minutes=30.0, general=GENERAL_NONE)
    )
    assert share == pytest.approx(2 / 3)
    config = RunConfig(
        name="m",
        version="1",
        data=DataConfig(source="npz", path="x.npz", channels=1, size=[8, 8]),
        train=TrainConfig(batch_size=4, **schedule(600, 100)),
        out_dir=str(options.run_dir),
    )
    rescaled = give_background_minutes_back(config, options)
    assert rescaled.train.max_steps == 900  # 600 steps planned for 2/3 of the minutes
    assert rescaled.train.model_dump() == {**config.train.model_dump(), **schedule(900, 100)}
    assert (options.run_dir / NO_BACKGROUND_MARK).exists()
    written = yaml.safe_load((options.run_dir / "config.yaml").read_text())
    assert RunConfig.model_validate(written) == rescaled
    assert give_background_minutes_back(rescaled, options) is rescaled  # resumed: not rescaled twice
    assert give_background_minutes_back(config, BuildOptions(images="x", name="n", general=GENERAL_NONE)) is config
