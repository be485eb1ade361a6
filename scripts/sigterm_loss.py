"""Count requests sent vs answered across a SIGTERM under load (issue 14: zero loss on SIGTERM).

Each run starts ``oodgate-serve`` (the real CLI, so the signal arrives as in
production), drives it with ``--clients`` keep-alive clients sending one-image
``.npy`` requests back to back (a 503 is not waited out: the clients keep
sending, the harshest case), sends SIGTERM after ``--load-s`` seconds, and keeps
the clients sending until the process has exited. Every attempt ends one of
three ways:

* **answered**: an HTTP answer came back (200 before the drain, 503 ``draining`` during it);
* **refused**: the TCP connect was refused (the listener is closed): nothing was
  sent, the client knows it is safe to retry elsewhere;
* **lost**: the request went out on an open connection and no answer came back
  (connection reset or closed under it). This must be 0.

    python -m scripts.sigterm_loss --runs 5                   # this checkout
    python -m scripts.sigterm_loss --runs 3 --checkout /path/to/older/checkout   # serve another version

Prints one line per run and a JSON summary; exits 1 if any request was lost.
Loopback only; bounded (each run ends when the server exits, at most ``--exit-timeout-s``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from benchmarks.harness import REPO, free_port


def npy_body(shape: tuple[int, int, int], seed: int = 0) -> bytes:
    c, h, w = shape
    image = np.random.default_rng(seed).integers(0, 256, size=(1, h, w) if c == 1 else (1, h, w, c), dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, image, allow_pickle=False)
    return buffer.getvalue()


def start_server(port: int, models_root: str, model: str | None, checkout: str) -> subprocess.Popen:
    env = {**os.environ, "OODGATE_LOG_LEVEL": "warning", "OODGATE_RUNTIME": "onnx", "PYTHONPATH": checkout}
    args = [sys.executable, "-m", "service.cli", "--port", str(port), "--models-root", models_root]
    if model:
        args += ["--models", model]
    return subprocess.Popen(args, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server not ready")


def client(url: str, body: bytes, proc: subprocess.Popen, tally: Counter, lock: threading.Lock, errors: list) -> None:
    headers = {"content-type": "application/x-npy"}
    with httpx.Client(base_url=url, timeout=60) as http:
        while proc.poll() is None:
            try:
                response = http.post("/score", content=body, headers=headers)
                outcome = f"answered_{response.status_code}"
            except httpx.ConnectError:
                outcome = "refused"
                time.sleep(0.01)
            except httpx.HTTPError as exc:  # sent on an open connection, no answer
                outcome = "lost"
                errors.append(repr(exc))
            with lock:
                tally[outcome] += 1


def one_run(args, shape) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, args.models_root, args.model, args.checkout)
    try:
        wait_ready(url, proc)
        tally: Counter = Counter()
        lock = threading.Lock()
        errors: list[str] = []
        body = npy_body(shape)
        threads = [
            threading.Thread(target=client, args=(url, body, proc, tally, lock, errors), daemon=True)
            for _ in range(args.clients)
        ]
        for t in threads:
            t.start()
        time.sleep(args.load_s)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(args.exit_timeout_s)
        exit_s = time.monotonic() - signalled
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    answered = sum(v for k, v in tally.items() if k.startswith("answered"))
    return {
        "sent": answered + tally["lost"],
        "answered": answered,
        "answered_200": tally["answered_200"],
        "answered_503": tally["answered_503"],
        "lost": tally["lost"],
        "refused_at_connect": tally["refused"],
        "exit_code": proc.returncode,
        "exit_s": round(exit_s, 2),
        "lost_errors": sorted(set(errors))[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-s", type=float, default=3.0, help="load before SIGTERM")
    parser.add_argument("--exit-timeout-s", type=float, default=60.0)
    parser.add_argument("--models-root", default=str(REPO / "models"))
    parser.add_argument("--model", default="fashion-glow/1")
    parser.add_argument("--checkout", default=str(REPO), help="the oodgate checkout to serve (default: this one)")
    args = parser.parse_args()
    from service.artifact import discover_bundles, load_manifest

    bundle = next(b for b in discover_bundles(Path(args.models_root)) if f"{b.parent.name}/{b.name}" == args.model)
    shape = load_manifest(bundle, verify=False).input.shape
    runs = []
    for i in range(args.runs):
        result = one_run(args, shape)
        runs.append(result)
        print(f"run {i + 1}: " + json.dumps({k: v for k, v in result.items() if k != "lost_errors"}), flush=True)
        if result["lost_errors"]:
            print(f"  lost: {result['lost_errors']}", flush=True)
    total = {k: sum(r[k] for r in runs) for k in ("sent", "answered", "answered_200", "answered_503", "lost")}
    total["runs"] = len(runs)
    total["max_exit_s"] = max(r["exit_s"] for r in runs)
    total["exit_codes"] = sorted({r["exit_code"] for r in runs})
    print(json.dumps(total))
    return 1 if total["lost"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
