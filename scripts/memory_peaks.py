"""Peak memory of ``oodgate-serve`` under big request bodies and a big upstream answer (issue 14).

Two cases, each on a fresh server (the default model), peak resident memory read
from ``/proc/<pid>/status`` (``VmHWM``) once ready and again after the load:

* **big bodies**: ``--clients`` concurrent ``POST /score`` with ``--body-mb`` MB
  bodies each (junk ``application/x-npy``: the server must read a body before it
  can judge it). Without a budget every body is buffered at once.
* **big upstream answer**: sidecar mode (policy ``shadow``) in front of an
  upstream that answers ``GET /big`` with ``--upstream-mb`` MB, streamed.

    python -m scripts.memory_peaks                                   # this checkout
    python -m scripts.memory_peaks --checkout /path/to/older/checkout

Loopback only; each case is bounded (clients time out after 120 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.harness import REPO, free_port

MB = 1024 * 1024


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def start_oodgate(checkout: str, port: int, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": checkout, "OODGATE_LOG_LEVEL": "warning", "OODGATE_RUNTIME": "onnx", **extra_env}
    command = [sys.executable, "-m", "service.cli", "--port", str(port), "--models-root", str(REPO / "models")]
    return subprocess.Popen(command, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def upstream_main(port: int, size_mb: int) -> None:
    """``--serve-upstream``: an upstream answering GET /big with ``size_mb`` MB, streamed in 1 MB chunks."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def big(request):
        async def chunks():
            block = b"z" * MB
            for _ in range(size_mb):
                yield block

        headers = {"content-length": str(size_mb * MB)}
        return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)

    async def health(request):
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/big", big), Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def big_bodies(url: str, clients: int, body_mb: int) -> Counter:
    body = os.urandom(body_mb * MB)
    tally: Counter = Counter()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:

        async def one():
            try:
                response = await http.post(f"{url}/score", content=body, headers={"content-type": "application/x-npy"})
                tally[response.status_code] += 1
            except httpx.HTTPError as exc:
                tally[type(exc).__name__] += 1

        await asyncio.gather(*(one() for _ in range(clients)))
    return tally


def case_big_bodies(args) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_oodgate(args.checkout, port, {})
    try:
        wait_for(f"{url}/v2/health/ready", proc)
        before = peak_rss_mb(proc.pid)
        tally = asyncio.run(big_bodies(url, args.clients, args.body_mb))
        time.sleep(0.5)
        return {
            "case": f"{args.clients} concurrent {args.body_mb} MB bodies",
            "answers": {str(k): v for k, v in sorted(tally.items(), key=str)},
            "peak_rss_mb_ready": round(before),
            "peak_rss_mb": round(peak_rss_mb(proc.pid)),
            "rss_mb_after": round(rss_mb(proc.pid)),
        }
    finally:
        proc.terminate()
        proc.wait(60)


def case_big_upstream(args) -> dict:
    up_port, port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "scripts.memory_peaks", "--serve-upstream", str(up_port), str(args.upstream_mb)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    env = {"OODGATE_UPSTREAM": f"http://127.0.0.1:{up_port}", "OODGATE_SIDECAR_POLICY": "shadow"}
    proc = start_oodgate(args.checkout, port, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"http://127.0.0.1:{up_port}/health", upstream)
        wait_for(f"{url}/v2/health/ready", proc)
        before = peak_rss_mb(proc.pid)
        began = time.monotonic()
        try:
            with httpx.stream("GET", f"{url}/big", timeout=120) as response:
                received = sum(len(chunk) for chunk in response.iter_raw())
                status = response.status_code
        except httpx.HTTPError as exc:
            status, received = type(exc).__name__, 0
        took = time.monotonic() - began
        time.sleep(0.5)
        return {
            "case": f"sidecar, one {args.upstream_mb} MB upstream answer",
            "status": status,
            "bytes_relayed": received,
            "seconds": round(took, 2),
            "peak_rss_mb_ready": round(before),
            "peak_rss_mb": round(peak_rss_mb(proc.pid)),
            "rss_mb_after": round(rss_mb(proc.pid)),
        }
    finally:
        for p in (proc, upstream):
            p.terminate()
            p.wait(60)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-upstream":
        upstream_main(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", default=str(REPO), help="the oodgate checkout to serve (default: this one)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--body-mb", type=int, default=28)
    parser.add_argument("--upstream-mb", type=int, default=600)
    args = parser.parse_args()
    for case in (case_big_bodies, case_big_upstream):
        print(json.dumps(case(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
