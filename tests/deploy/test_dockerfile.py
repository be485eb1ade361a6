"""The Dockerfile, parsed by Docker's own (BuildKit) parser via the ``dockerfile`` package.

Docker does not run on these machines, so the build itself is not tested; these are
the properties the issue asks for, read from the parsed instructions.
"""

from __future__ import annotations

import fnmatch

import pytest

from tests.deploy.conftest import ROOT

dockerfile = pytest.importorskip("dockerfile")


@pytest.fixture(scope="module")
def commands():
    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


@pytest.fixture(scope="module")
def stages(commands) -> dict[str, list]:
    stages: dict[str, list] = {}
    current = None
    for command in commands:
        if command.cmd == "FROM":
            current = command.value[-1] if len(command.value) == 3 else command.value[0]
            stages[current] = []
        elif current is not None:
            stages[current].append(command)
    return stages


def first(stage: list, cmd: str):
    return next(c for c in stage if c.cmd == cmd)


def test_multi_stage_with_cpu_and_cuda_variants(commands, stages):
    froms = {c.value[-1]: c.value[0] for c in commands if c.cmd == "FROM"}
    assert froms["base-cpu"] == "python:3.11-slim"
    assert froms["base-cuda"] == "${CUDA_BASE}"
    assert froms["builder"] == froms["runtime"] == "base-${VARIANT}"
    global_args = dict(c.value[0].split("=", 1) for c in commands[: commands.index(first(commands, "FROM"))])
    assert global_args["VARIANT"] == "cpu"
    assert global_args["CUDA_BASE"].startswith("nvidia/cuda:")
    # the CUDA variant swaps in the GPU build of ONNX Runtime
    assert any("onnxruntime-gpu" in c.value[0] for c in stages["builder"] if c.cmd == "RUN")
    # the runtime takes only the venv from the builder: no compilers or pip caches ride along
    copies_from = [c for c in stages["runtime"] if c.cmd == "COPY" and any(f.startswith("--from") for f in c.flags)]
    assert [(c.flags, c.value) for c in copies_from] == [(("--from=builder",), ("/opt/venv", "/opt/venv"))]


def test_runtime_is_non_root_with_the_default_model_and_a_healthcheck(stages):
    runtime = stages["runtime"]
    user = [c for c in runtime if c.cmd == "USER"][-1].value[0]
    assert user.split(":")[0] not in ("root", "0")
    assert ("models", "./models") in [c.value for c in runtime if c.cmd == "COPY"]
    healthcheck = first(runtime, "HEALTHCHECK")
    assert healthcheck.value[0] == "CMD" and "/v2/health/ready" in healthcheck.value[-1]
    assert first(runtime, "CMD").value == ("oodgate-serve",)
    env = {}
    for c in runtime:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    assert env["OODGATE_HOST"] == "0.0.0.0"
    assert env["OODGATE_MODELS_ROOT"] == "/app/models"
    assert first(runtime, "EXPOSE").value == (env["OODGATE_PORT"],)


def test_every_copied_path_exists_and_is_not_dockerignored(commands):
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = [s for c in commands if c.cmd == "COPY" and not any("--from" in f for f in c.flags) for s in c.value[:-1]]
    assert {"service", "training", "models", "examples", "pyproject.toml", "README.md"} == set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is dockerignored"
    assert (ROOT / "models" / "fashion-glow" / "1" / "manifest.json").exists(), "the default model goes in the image"
