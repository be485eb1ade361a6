"""Goodput (images answered 200 per second) at capacity and under 10x overload (issue 14).

Starts ``oodgate-serve`` on the default model and drives it with closed-loop
clients, each sending multipart requests of ``--images`` PNGs back to back (a 503
is not waited out: the client sends again at once, the harshest case). First
``--capacity-clients`` clients (the load the server can just keep up with), then
ten times as many. Goodput counts only images answered 200. The target: goodput
under overload >= 80% of goodput at capacity. The server's and the load
generator's CPU seconds are printed too: on a small shared machine the generator's
own work under overload takes CPU from the server.

    python -m scripts.overload_goodput                           # this checkout
    python -m scripts.overload_goodput --checkout /path/to/older/checkout

One asyncio client process on the same machine as the server (loopback); bounded
by ``--seconds`` per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.harness import REPO, free_port


def multipart_body(count: int, size: int = 28) -> tuple[bytes, str]:
    """A multipart body of ``count`` distinct grayscale PNGs, built once and sent by every client."""
    rng = np.random.default_rng(0)
    boundary = uuid.uuid4().hex
    parts = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(size, size), dtype=np.uint8)).save(buffer, format="PNG")
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
            + buffer.getvalue()
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def phase(
    url: str, clients: int, seconds: float, body: bytes, content_type: str, images: int, honor_retry_after: bool
) -> dict:
    tally: Counter = Counter()
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def one_client():
            while time.monotonic() < end:
                try:
                    response = await http.post("/score", content=body, headers={"content-type": content_type})
                    tally[response.status_code] += 1
                    if honor_retry_after and response.status_code == 503:
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                except httpx.HTTPError:
                    tally["error"] += 1

        began = time.monotonic()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        took = time.monotonic() - began
    return {
        "clients": clients,
        "seconds": round(took, 1),
        "answers": dict(sorted((str(k), v) for k, v in tally.items())),
        "goodput_images_s": round(tally[200] * images / took, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", default=str(REPO), help="the oodgate checkout to serve (default: this one)")
    parser.add_argument("--images", type=int, default=64, help="images per request")
    parser.add_argument("--capacity-clients", type=int, default=4)
    parser.add_argument("--overload", type=int, default=10, help="overload = this many times the capacity clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument(
        "--honor-retry-after", action="store_true", help="clients wait out a 503's Retry-After (as they should)"
    )
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="lower the load generator's CPU priority by this much (19: the server, started first at normal "
        "priority, gets the CPU it needs, as with the generator on another machine)",
    )
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": args.checkout, "OODGATE_LOG_LEVEL": "warning", "OODGATE_RUNTIME": "onnx"}
    command = [sys.executable, "-m", "service.cli", "--port", str(port), "--models-root", str(REPO / "models")]
    proc = subprocess.Popen(command, cwd=args.checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError("server did not become ready")
            time.sleep(0.2)
        if args.client_nice:
            os.nice(args.client_nice)  # this process only: the server keeps its priority
        body, content_type = multipart_body(args.images)
        results = []
        for name, clients in (
            ("capacity", args.capacity_clients),
            (f"{args.overload}x overload", args.capacity_clients * args.overload),
        ):
            server_cpu, client_cpu = cpu_seconds(proc.pid), time.process_time()
            result = asyncio.run(
                phase(url, clients, args.seconds, body, content_type, args.images, args.honor_retry_after)
            )
            result["server_cpu_s"] = round(cpu_seconds(proc.pid) - server_cpu, 1)
            result["client_cpu_s"] = round(time.process_time() - client_cpu, 1)  # the load generator, same machine
            # images answered per CPU second the server got: goodput with the machine's other load taken out
            result["images_per_server_cpu_s"] = round(
                result["answers"].get("200", 0) * args.images / max(result["server_cpu_s"], 1e-9), 1
            )
            results.append(result)
            print(json.dumps({"phase": name, **result}), flush=True)
        capacity, overload = results
    finally:
        proc.terminate()
        proc.wait(60)
    ratio = overload["goodput_images_s"] / max(capacity["goodput_images_s"], 1e-9)
    per_cpu = overload["images_per_server_cpu_s"] / max(capacity["images_per_server_cpu_s"], 1e-9)
    print(
        json.dumps(
            {
                "overload_over_capacity": round(ratio, 3),
                "per_server_cpu_overload_over_capacity": round(per_cpu, 3),
                "target": 0.8,
                "met": ratio >= 0.8,
            }
        )
    )
    return 0 if ratio >= 0.8 else 1


if __name__ == "__main__":
    raise SystemExit(main())
