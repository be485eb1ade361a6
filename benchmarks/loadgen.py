"""The load generator the peer benchmarks share: request bodies, closed and open loops, and one measured run.

Raw asyncio streams with keep-alive in the benchmark's own process: each request is
built once per point and sent as is, so the client costs next to nothing beside the
server it measures.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from benchmarks.harness import cpu_ticks, npy_body, steal_share
from service.api.v2 import HEADER_LENGTH

MODEL_NAME = "fashion-glow"  # the bundled model every peer serves, and the one the v2 bodies address
V2_PATH = f"/v2/models/{MODEL_NAME}/infer"
CONNECTION_CAP = 256  # most connections the open loop opens
REQUEST_TIMEOUT_S = 60.0  # an answer later than this counts as a failure (0) and its connection is dropped


# ---- bodies -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BodyKind:
    """One way of sending the same images: where to, as what, and the extra headers it needs."""

    key: str
    label: str
    path: str
    content_type: str
    build: Callable[[np.ndarray], tuple[bytes, dict[str, str]]]


def v2_json_body(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A v2 inference request of ``images`` ([N,1,H,W] uint8) as one UINT8 ``[N,H,W]`` tensor, plain JSON."""
    n, _, h, w = images.shape
    tensor = {"name": "images", "datatype": "UINT8", "shape": [n, h, w], "data": images.reshape(-1).tolist()}
    return json.dumps({"inputs": [tensor]}).encode(), {}


def v2_binary_body(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The same tensor with Triton's binary tensor data extension, outputs asked for in binary as well."""
    n, _, h, w = images.shape
    raw = np.ascontiguousarray(images).tobytes()
    tensor = {"name": "images", "datatype": "UINT8", "shape": [n, h, w], "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {HEADER_LENGTH: str(len(header))}


def npy_score_body(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return npy_body(images), {}


BODY_KINDS = {
    kind.key: kind
    for kind in (
        BodyKind("v2-json", "v2 JSON", V2_PATH, "application/json", v2_json_body),
        BodyKind("v2-binary", "v2 binary ext.", V2_PATH, "application/octet-stream", v2_binary_body),
        BodyKind("npy", "/score npy", "/score", "application/x-npy", npy_score_body),
    )
}


def http_request(kind: BodyKind, body: bytes, headers: dict[str, str], port: int) -> bytes:
    """The whole HTTP/1.1 request, built once per point and sent as is, so the client costs next to nothing."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (
        f"POST {kind.path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {kind.content_type}\r\n{extra}"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


# ---- load generator ---------------------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body, and whether the server will close the connection, of one HTTP/1.1 answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    else:
        body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, body, headers.get("connection", "").lower() == "close"


class Connection:
    """One keep-alive connection that reopens itself after a close or a broken answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes) -> int:
        """Send ``request``, return the answer's status (0 when the connection broke)."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.writer.write(request)
                status, _, close = await read_response(self.reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return 0
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)  # of 200 answers
    errors: int = 0


def run_loop(coro_factory) -> float:
    """Run the load on a fresh event loop (uvloop when installed, as for every server); its wall time."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with oodgate's dependencies
        runner = asyncio.run
    start = time.perf_counter()
    runner(coro_factory())
    return time.perf_counter() - start


def closed_loop(port: int | list[int], request: bytes, concurrency: int, seconds: float) -> tuple[Samples, float]:
    """``concurrency`` connections, each sending its next request when its answer arrives, for ``seconds``.

    Several ports: connection ``i`` goes to ``port[i % len(port)]``, as a Service spreads connections
    (not requests) over its Pods."""
    samples = Samples()
    ports = [port] if isinstance(port, int) else list(port)

    async def connection(deadline: float, port: int) -> None:
        conn = Connection(port)
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                status = await conn.exchange(request)
                if status == 200:
                    samples.latencies.append(time.perf_counter() - start)
                else:
                    samples.errors += 1
        finally:
            conn.close()

    async def run() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(connection(deadline, ports[i % len(ports)]) for i in range(concurrency)))

    return samples, run_loop(run)


def open_loop(port: int, request: bytes, rate: float, seconds: float) -> tuple[Samples, float]:
    """Requests sent at ``rate`` per second for ``seconds`` (each on an idle connection, a new one up to
    :data:`CONNECTION_CAP`); latency from the scheduled send time, waiting for a connection included."""
    samples = Samples()

    async def run() -> None:
        idle: list[Connection] = []
        opened = 0
        available = asyncio.Condition()

        async def one(scheduled: float) -> None:
            nonlocal opened
            async with available:
                while not idle and opened >= CONNECTION_CAP:
                    await available.wait()
                if idle:
                    conn = idle.pop()
                else:
                    conn, opened = Connection(port), opened + 1
            status = await conn.exchange(request)
            if status == 200:
                samples.latencies.append(time.perf_counter() - scheduled)
            else:
                samples.errors += 1
            async with available:
                idle.append(conn)
                available.notify()

        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        for conn in idle:
            conn.close()

    return samples, run_loop(run)


@dataclass
class Run:
    images_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    steal: float


def measured(load: Callable[[], tuple[Samples, float]], images: int) -> Run:
    before = cpu_ticks()
    samples, elapsed = load()
    steal = steal_share(before, cpu_ticks())
    ms = np.array(samples.latencies or [np.nan]) * 1000
    ok = len(samples.latencies)
    return Run(ok * images / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), samples.errors, steal)


def median_run(runs: list[Run]) -> dict:
    """One point over its rounds: the median of each figure (errors summed), and the throughput range."""
    rates = [r.images_per_s for r in runs]
    out = {k: float(np.median([getattr(r, k) for r in runs])) for k in ("images_per_s", "p50_ms", "p99_ms", "steal")}
    out["errors"] = sum(r.errors for r in runs)
    out["min_images_per_s"], out["max_images_per_s"] = min(rates), max(rates)
    out["rounds"] = [asdict(r) for r in runs]
    return out
