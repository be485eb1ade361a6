"""Paths and loaders shared by the deployment tests (no Docker, no cluster: files only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", "prometheus")
