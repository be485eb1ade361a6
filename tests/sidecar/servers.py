"""Real servers on loopback for the sidecar and deployment tests: uvicorn in a thread, free ports."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
DEFAULT_BUNDLE = ROOT / "models" / "fashion-glow" / "1"
CLASSIFIER_APP = ROOT / "examples" / "classifier" / "app.py"


class LiveServer:
    """``app`` served by uvicorn on 127.0.0.1 and a free port in a daemon thread; ``stop()`` ends it."""

    def __init__(self, app) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, health: str = "/v2/health/ready", timeout: float = 120.0) -> LiveServer:
        self.thread.start()
        wait_for(f"{self.url}{health}", timeout)
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(30)
        self.sock.close()


def wait_for(url: str, timeout: float) -> None:
    """Poll ``url`` until it answers 200 (bounded)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def default_models_root(tmp_path: Path) -> Path:
    """A repository holding only the default model (symlinked: nothing is copied)."""
    root = tmp_path / "models"
    (root / "fashion-glow").mkdir(parents=True)
    (root / "fashion-glow" / "1").symlink_to(DEFAULT_BUNDLE)
    return root


def calibrated_tiny_root(tmp_path: Path, tiny_root: Path) -> Path:
    """The session's tiny bundle, copied and calibrated on smooth blobs (p-values and flags exist)."""
    from service.artifact import load_manifest
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
    detector.save(bundle, manifest)
    return root


def images(prefix: str) -> list[tuple[str, bytes]]:
    """The committed test PNGs whose names start with ``prefix`` (``fashion_`` or ``mnist_``)."""
    return [(p.name, p.read_bytes()) for p in sorted(DATA.glob(f"{prefix}*.png"))]
