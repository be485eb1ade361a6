"""The Dockerfile, read as text (Docker does not run here): the properties the issue asks for."""

from __future__ import annotations

import fnmatch
import json
import re

import pytest

from tests.deploy.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


@pytest.fixture(scope="module")
def stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list] = {}
    current = None
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = []
        elif current is not None:
            stages[current].append((word, rest))
    return stages


def test_multi_stage_with_cpu_and_cuda_variants(stages):
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert "python:3.11-slim AS base-cpu" in froms
    assert any(f.endswith("AS base-cuda") for f in froms)
    assert "base-${VARIANT} AS builder" in froms and "base-${VARIANT} AS runtime" in froms
    global_args = [rest for word, rest in instructions()[: instructions().index(("FROM", froms[0]))] if word == "ARG"]
    assert "VARIANT=cpu" in global_args
    assert any("nvidia/cuda" in a for a in global_args)
    # The runtime copies only the venv from the builder: no compilers or pip caches ride along.
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in stages["runtime"]


def test_runtime_is_non_root_with_the_default_model_and_a_healthcheck(stages):
    runtime = stages["runtime"]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert any(c.endswith("models ./models") for c in copies)
    assert (ROOT / "models").is_dir() or pytest.skip("models/ not committed yet")
    healthcheck = next(rest for word, rest in runtime if word == "HEALTHCHECK")
    assert "/v2/health/ready" in healthcheck
    cmd = json.loads(next(rest for word, rest in runtime if word == "CMD"))
    assert cmd == ["oodgate-serve"]
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "OODGATE_HOST=0.0.0.0" in env and "OODGATE_MODELS_ROOT=/app/models" in env


def test_every_copied_path_exists_and_is_not_dockerignored(stages):
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for stage in stages.values():
        for word, rest in stage:
            if word != "COPY" or "--from=" in rest:
                continue
            parts = [p for p in rest.split() if not p.startswith("--")]
            for source in parts[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
                assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is dockerignored"
