"""Run configs: every example in configs/ validates, and the data section reads what it says."""

from pathlib import Path

import numpy as np
import pytest

from training.config import DataConfig, load_config

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("name", ["folder", "npz", "idx", "cifar"])
def test_each_example_config_is_valid_and_names_its_source(name):
    config = load_config(CONFIGS / "examples" / f"{name}.yaml")
    assert config.data.source == name


def test_data_config_converts_channels_and_size_and_reads_its_test_set(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", images=rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "test.npz", images=rng.integers(0, 256, (2, 1, 4, 4), dtype=np.uint8))
    data = DataConfig(
        source="npz", path=str(tmp_path / "train.npz"), channels=1, size=(4, 4), test_path=str(tmp_path / "test.npz")
    )
    assert data.load().shape == (6, 1, 4, 4)
    assert data.load_test((3, 8, 8)).shape == (2, 3, 8, 8)  # fitted to the model's input
    assert DataConfig(source="npz", path=str(tmp_path / "train.npz")).load_test() is None
