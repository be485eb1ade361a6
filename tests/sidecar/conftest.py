"""Fixtures for the sidecar tests: real servers on loopback (module-scoped, started once)."""

from __future__ import annotations

import pytest

from tests.sidecar.servers import calibrated_tiny_root


@pytest.fixture(scope="session")
def calibrated_tiny(tmp_path_factory, tiny_models_root):
    """A model repository with a tiny flow calibrated on smooth blobs: p-values and flags, in seconds."""
    return calibrated_tiny_root(tmp_path_factory.mktemp("calibrated"), tiny_models_root)
