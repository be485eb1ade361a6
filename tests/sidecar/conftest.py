"""Fixtures for the sidecar tests: real servers on loopback (module-scoped, started once)."""

from __future__ import annotations

import httpx
import pytest

from service.app import create_app
from tests.sidecar.servers import (
    LiveServer,
    calibrated_tiny_root,
    default_model_calibrated,
    default_models_root,
    echo_app,
    recorded_classifier,
    sidecar_settings,
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


@pytest.fixture(scope="module")
def upstream():
    """The echo upstream on loopback (one per test module that asks)."""
    server = LiveServer(echo_app()).start(health="/health")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gate(upstream, calibrated_tiny):
    """oodgate in annotate mode in front of the echo upstream, with a tiny calibrated flow."""
    settings = sidecar_settings(
        calibrated_tiny,
        upstream.url,
        decode_threads=1,
        max_batch_size=4,
        sidecar_policy="annotate",
        upstream_timeout_s=1.0,
    )
    server = LiveServer(create_app(settings)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gate):
    with httpx.Client(base_url=gate.url, timeout=30) as c:
        yield c
