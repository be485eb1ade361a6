"""Fixtures for the sidecar tests: real servers on loopback (module-scoped, started once)."""

from __future__ import annotations

import pytest

from tests.sidecar.servers import (
    calibrated_tiny_root,
    default_model_calibrated,
    default_models_root,
    recorded_classifier,
)


@pytest.fixture(scope="session")
def calibrated_tiny(tmp_path_factory, tiny_models_root):
    """A model repository with a tiny flow calibrated on smooth blobs: p-values and flags, in seconds."""
    return calibrated_tiny_root(tmp_path_factory.mktemp("calibrated"), tiny_models_root)


@pytest.fixture(scope="module")
def gate_models_root(tmp_path_factory, request):
    """What a gate in front of the demo classifier serves: the committed default model once it is
    calibrated, else the tiny calibrated stand-in."""
    if default_model_calibrated():
        return default_models_root(tmp_path_factory.mktemp("default"))
    return request.getfixturevalue("calibrated_tiny")


@pytest.fixture(scope="module")
def classifier():
    """The demo classifier on loopback, recording the requests that reach it (one per test module)."""
    server = recorded_classifier()
    yield server
    server.stop()
