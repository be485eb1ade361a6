"""Fixtures of the service tests that several modules share."""

from __future__ import annotations

import pytest

from .serving import calibrated_root


@pytest.fixture(scope="session")
def calibrated_models_root(tmp_path_factory, tiny_models_root):
    """The tiny bundle calibrated on smooth blobs (p-values and flags exist). Read-only: copy it to change it."""
    return calibrated_root(tmp_path_factory.mktemp("calibrated"), tiny_models_root)
