"""Real servers on loopback for the sidecar and deployment tests: uvicorn in a thread, free ports."""

from __future__ import annotations

import asyncio
import base64
import gzip
import importlib.util
import shutil
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# one loopback server helper for every test package; re-exported for the sidecar and deploy tests
from tests.service.serving import LiveServer, free_port, raw_http, wait_for  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
DEFAULT_BUNDLE = ROOT / "models" / "fashion-glow" / "1"
CLASSIFIER_APP = ROOT / "examples" / "classifier" / "app.py"


def classifier_app():
    """The demo classifier's FastAPI app, loaded from its file (``examples/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("oodgate_example_classifier", CLASSIFIER_APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.create_app()


def default_model_calibrated() -> bool:
    """The committed default model exists and carries its calibration (so it can flag images)."""
    from service.artifact import ArtifactError, load_manifest

    try:
        return bool(load_manifest(DEFAULT_BUNDLE, verify=False).calibration)
    except ArtifactError:
        return False


class Recording:
    """ASGI wrapper keeping the raw path of every HTTP request that reaches the wrapped app."""

    def __init__(self, app) -> None:
        self.app, self.paths = app, []

    @property
    def count(self) -> int:
        return len(self.paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.paths.append(scope["raw_path"].decode("latin-1"))
        await self.app(scope, receive, send)


def recorded_classifier() -> LiveServer:
    """The demo classifier on loopback, every request it gets recorded in ``server.recording``."""
    recording = Recording(classifier_app())
    server = LiveServer(recording).start(health="/health")
    server.recording = recording
    return server


def default_models_root(tmp_path: Path) -> Path:
    """A repository holding only the default model (symlinked: nothing is copied)."""
    root = tmp_path / "models"
    (root / "fashion-glow").mkdir(parents=True)
    (root / "fashion-glow" / "1").symlink_to(DEFAULT_BUNDLE)
    return root


def calibrated_tiny_root(tmp_path: Path, tiny_root: Path) -> Path:
    """The session's tiny bundle, copied and calibrated on smooth blobs (p-values and flags exist)."""
    from service.artifact import load_manifest
    from service.calibration_file import save_calibration
    from service.complexity import complexity_bits
    from service.ood import Detector
    from service.runtimes import load_runtime

    root = tmp_path / "models"
    bundle = root / "tiny" / "1"
    shutil.copytree(tiny_root / "tiny" / "1", bundle)
    manifest = load_manifest(bundle)
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 256, size=(200, 1, 7, 7)).astype(np.float64)
    holdout = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3).astype(np.uint8)
    stats = load_runtime(manifest, bundle, backend="onnx", device="cpu").run(holdout)
    detector = Detector(manifest.input.dims, manifest.levels, dose_density="gaussian")
    detector.fit(stats, complexity_bits(holdout), seed=0)
    save_calibration(detector, bundle, manifest)
    return root


def sidecar_settings(models_root: Path, upstream: str, **overrides):
    """Settings of a sidecar in front of ``upstream`` on loopback (ONNX Runtime, quiet logs)."""
    from service.settings import Settings

    return Settings(models_root=models_root, runtime="onnx", log_level="warning", upstream=upstream, **overrides)


def images(prefix: str) -> list[tuple[str, bytes]]:
    """The committed test PNGs whose names start with ``prefix`` (``fashion_`` or ``mnist_``)."""
    return [(p.name, p.read_bytes()) for p in sorted(DATA.glob(f"{prefix}*.png"))]


# ---- an echo upstream: answers with exactly what reached it ----------------------------------------


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "raw_path": request.scope["raw_path"].decode(),
            "query": request.scope["query_string"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in request.headers.raw],
            "body_b64": base64.b64encode(body).decode(),
        },
        headers={"x-upstream": "echo", "keep-alive": "timeout=5", "connection": "x-secret", "x-secret": "hop"},
    )


async def teapot(request: Request) -> Response:
    response = Response(gzip.compress(b"short and stout"), status_code=418, media_type="text/plain")
    response.headers["content-encoding"] = "gzip"
    response.raw_headers.append((b"set-cookie", b"a=1; Path=/"))
    response.raw_headers.append((b"set-cookie", b"b=2; Path=/"))
    return response


async def slow(request: Request) -> Response:
    await asyncio.sleep(3)
    return Response(b"too late")


def echo_app() -> Starlette:
    routes = [
        Route("/teapot", teapot, methods=["GET", "POST"]),
        Route("/slow", slow, methods=["GET", "POST"]),
        Route("/health", lambda r: Response(b"ok")),
        Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    return Starlette(routes=routes)


def headers_of(echoed: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in echoed["headers"]:
        out.setdefault(key.lower(), []).append(value)
    return out
