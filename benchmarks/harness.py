"""What every benchmark and measurement script shares: the checkout, servers as child processes, the host.

Run the tools as modules from the checkout's root (``python -m benchmarks.serve_bench``,
``python -m scripts.sigterm_loss``): the package imports then resolve without touching
``sys.path``. :data:`REPO` is still the checkout, for the bundles under ``models/``,
the pages under ``docs/`` and a child server's ``PYTHONPATH``.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
# the allocator settings the Makefile serves with (see its comment): benchmarks measure the service as shipped
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}
SERVER_STOP_TIMEOUT_S = 60  # a server that has not exited this long after SIGTERM is killed


def command_line(module: str, argv: list[str] | None, env: dict[str, str] | None = None) -> str:
    """The command that reproduces this run, as a report prints it: ``.venv/bin/python -m MODULE ARGS``."""
    prefix = [f"{k}={v}" for k, v in (env or {}).items()]
    return " ".join([*prefix, ".venv/bin/python", "-m", module, *(argv if argv is not None else sys.argv[1:])])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, path: str = "/v2/health/ready", timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    if shutil.which("nvidia-smi"):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        )
        info["gpu"] = gpu.stdout.strip() or "none"
    else:
        info["gpu"] = "none"
    import importlib.metadata as md

    for name in ("onnxruntime", "torch", "fastapi", "uvicorn", "uvloop", "httptools"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    hey = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "hey"], capture_output=True, text=True)
    info["hey"] = hey.stdout.strip() or "?"
    return info


def launch(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """Start a server with its output going to ``log``: a pipe nobody reads fills up (MLServer logs a traceback
    per refused request) and then blocks the server mid-answer."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def launch_oodgate(port: int, model: str, log: Path, tree: Path = REPO, **settings: str) -> subprocess.Popen:
    """oodgate from ``tree`` (this checkout, or an older one) serving ``model`` of this checkout's ``models/``.

    ONNX runtime, log level warning; ``settings``: more ``OODGATE_*`` environment variables.
    """
    env = {**os.environ, "PYTHONPATH": str(tree), "OODGATE_LOG_LEVEL": "warning", **settings}
    cmd = [sys.executable, "-m", "service.cli", "--port", str(port), "--models-root", str(REPO / "models")]
    return launch([*cmd, "--models", model, "--runtime", "onnx"], tree, env, log)


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_ticks() -> list[int]:
    """The machine's aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq steal ...)."""
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def steal_share(before: list[int], after: list[int]) -> float:
    """Steal ticks over all ticks between two :func:`cpu_ticks` readings (guest ticks are already in user)."""
    delta = [a - b for a, b in zip(after[:8], before[:8], strict=True)]
    total = sum(delta)
    return delta[7] / total if total else 0.0


def best_rate(work, batch: int, windows: int, seconds: float) -> float:
    """Images/s of ``work()`` (one batch of ``batch`` images), best of ``windows`` windows of ``seconds``."""
    work()  # the first call pays one-off costs (allocation, kernel selection)
    best = 0.0
    for _ in range(windows):
        started, count = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            work()
            count += batch
        best = max(best, count / (time.perf_counter() - started))
    return best


def test_images(n: int, shape, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c, h, w = shape
    coarse = rng.integers(0, 256, size=(n, c, (h + 3) // 4, (w + 3) // 4))
    return np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :h, :w].astype(np.uint8)


def npy_body(images: np.ndarray) -> bytes:
    array = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def write_report(out: Path, text: str, meta: dict, results: dict) -> None:
    """The page, and its raw numbers beside it as ``.json``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(text)
