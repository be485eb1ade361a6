"""Helpers for the service tests: real uvicorn servers on loopback, controllable runtimes, test images."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from PIL import Image

from service.app import create_app
from service.artifact import load_manifest
from service.calibration_file import save_calibration
from service.cli import uvicorn_config
from service.complexity import complexity_bits
from service.ood import Detector
from service.repository import default_runtime_factory
from service.runtimes import load_runtime
from service.settings import Settings

SHAPE = (1, 28, 28)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A real uvicorn server for ``app`` on 127.0.0.1 and a free port, in a background thread.

    Use as a context manager, or ``start(health=...)`` / ``stop()`` for servers
    that outlive one block (module fixtures) or answer health on another path.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10)
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

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class CliLiveServer(LiveServer):
    """A :class:`LiveServer` with ``oodgate-serve``'s uvicorn configuration (its connection limits)."""

    def __init__(self, app, settings: Settings) -> None:
        super().__init__(app)
        self.server = uvicorn.Server(uvicorn_config(app, settings))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)


def wait_for(url: str, timeout: float = 120.0, proc=None) -> None:
    """Poll ``url`` until it answers 200 (bounded); fail fast if ``proc`` died."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


def wait_ready(url: str, timeout: float = 60.0, proc=None) -> None:
    wait_for(f"{url}/v2/health/ready", timeout, proc)


def settings(models_root: Path, **overrides) -> Settings:
    base = {"models_root": models_root, "runtime": "onnx", "log_level": "warning", "decode_threads": 1}
    return Settings(**{**base, **overrides})


class ControlledRuntime:
    """Wraps a real runtime: can be held at a gate, fails on poisoned (all-white) images, records batches."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.backend, self.device = inner.backend, inner.device
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        self.gate.wait(30)
        if (images.reshape(len(images), -1) == 255).all(axis=1).any():
            raise RuntimeError("poisoned image in the batch")
        self.batches.append(len(images))
        return self.inner.run(images)


def controlled_app(models_root: Path, **overrides):
    """An app whose every model runs through a :class:`ControlledRuntime`; returns (app, runtimes)."""
    runtimes: list[ControlledRuntime] = []

    def factory(manifest, bundle_dir, s):
        runtime = ControlledRuntime(default_runtime_factory(manifest, bundle_dir, s))
        runtimes.append(runtime)
        return runtime

    return create_app(settings(models_root, **overrides), runtime_factory=factory), runtimes


def random_images(n: int, seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def smooth_images(n: int, seed: int = 0, shape=SHAPE) -> np.ndarray:
    """Blurry blobs: a stand-in "in-distribution" set that compresses unlike noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, shape[0], 7, 7)).astype(np.float64)
    return np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3).astype(np.uint8)


def png(image: np.ndarray, mode: str | None = None) -> bytes:
    """uint8 [C,H,W] (or [H,W]) -> PNG bytes."""
    array = image[0] if image.ndim == 3 and image.shape[0] == 1 else image
    if array.ndim == 3:
        array = array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def reference_stats(models_root: Path, images: np.ndarray, name: str = "tiny", version: str = "1") -> dict:
    """The graph outputs computed in-process with ONNX Runtime, for value assertions."""
    bundle = models_root / name / version
    runtime = load_runtime(load_manifest(bundle), bundle, backend="onnx", device="cpu")
    return runtime.run(images)


def calibrated_root(tmp_root: Path, tiny_root: Path) -> Path:
    """A copy of the tiny bundle calibrated on smooth images (so p-values and flags exist)."""
    bundle = tmp_root / "tiny" / "1"
    shutil.copytree(tiny_root / "tiny" / "1", bundle)
    manifest = load_manifest(bundle)
    holdout = smooth_images(200, seed=1)
    stats = reference_stats(tmp_root, holdout)
    detector = Detector(manifest.input.dims, manifest.levels, dose_density="gaussian")
    detector.fit(stats, complexity_bits(holdout), seed=0)
    save_calibration(detector, bundle, manifest)
    return tmp_root


def multipart_files(images: np.ndarray) -> list:
    """httpx ``files=`` for a stack of uint8 images, each sent as a PNG part named ``files``."""
    return [("files", (f"{i}.png", png(x), "image/png")) for i, x in enumerate(images)]


def raw_http(port: int, request: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """Send ``request`` byte for byte (no client normalises its path) and read to EOF: (status, body).

    The request should carry ``Connection: close`` so the server ends the answer with the connection.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
