"""oodgate against Seldon MLServer and a naive endpoint on the same ONNX file; writes ``docs/peers.md`` and ``.json``.

Three servers, one at a time (the order rotates every round), each fed the same request
bodies of real FashionMNIST test images (UINT8 ``[N,28,28]``) on loopback:

- **oodgate** as shipped (``python -m service.cli --runtime onnx``): every output, the flipped
  second flow pass, the bundled default score, its p-value and the OOD decision per image.
  Bodies: v2 JSON, the v2 binary tensor extension, and ``/score`` with ``application/x-npy``.
- **MLServer** (its own venv, ``.peers-venv``, made by ``--setup``) with adaptive batching and a
  20-line custom runtime returning ``bpd`` only, from an ONNX Runtime session with oodgate's
  session settings. Its ``max_batch_size`` counts requests, not images.
- **naive**: ``benchmarks/naive_app.py``, one ONNX Runtime call per request, ``bpd`` only.

Each body kind is probed first; a server that does not answer it with 200 is recorded as
not supporting it. Loads: a closed loop (each of ``c`` connections sends its next request
when the previous answer has arrived) and an open loop (requests sent at a fixed rate
whatever the answers do; latency counts from the scheduled send, so a stalled server is not
hidden by a stalled client). The load generator is raw asyncio streams with keep-alive in
this process: it shares the machine's cores with the server, equally for every server. Per
point: images/s of 200 answers, p50/p99 of their latency, non-200 answers and the machine's
steal time (``/proc/stat`` before and after); the load average is recorded before and after
each server's turn. Medians over ``--rounds``.

    python3 -m venv .peers-venv && .venv/bin/python benchmarks/peers.py --setup   # once
    .venv/bin/python benchmarks/peers.py            # about 8 minutes
    .venv/bin/python benchmarks/peers.py --quick    # about 1.5 minutes, one round, --out /tmp/...
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serve_bench import free_port, machine, npy_body, stop, wait_ready  # noqa: E402
from service.api.v2 import HEADER_LENGTH  # noqa: E402

PEERS_VENV = REPO / ".peers-venv"
MLSERVER_VERSION = "1.7.1"
MODEL_NAME = "fashion-glow"
V2_PATH = f"/v2/models/{MODEL_NAME}/infer"
CONNECTION_CAP = 256  # most connections the open loop opens
REQUEST_TIMEOUT_S = 60.0  # an answer later than this counts as a failure (0) and its connection is dropped

# The whole MLServer side: a custom runtime and its settings, written into a temp dir per run.
MLSERVER_RUNTIME = """
import os
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class BpdRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()  # oodgate's settings (service/runtimes.py OnnxGraph)
        options.intra_op_num_threads = int(os.environ.get("PEERS_THREADS", "0")) or os.cpu_count()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.uint8)
        (bpd,) = self._session.run(["bpd"], {"images": images.reshape(len(images), 1, *images.shape[1:3])})
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("bpd", bpd)])
"""


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


def cpu_ticks() -> list[int]:
    """The machine's aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq steal ...)."""
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def steal_share(before: list[int], after: list[int]) -> float:
    """Steal ticks over all ticks between two :func:`cpu_ticks` readings (guest ticks are already in user)."""
    delta = [a - b for a, b in zip(after[:8], before[:8], strict=True)]
    total = sum(delta)
    return delta[7] / total if total else 0.0


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


# ---- servers ----------------------------------------------------------------------------------------


def launch(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """Start a server with its output going to ``log``: a pipe nobody reads fills up (MLServer logs a traceback
    per refused request) and then blocks the server mid-answer."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def start_oodgate(port: int, threads: int, onnx: Path, log: Path, tree: Path = REPO) -> subprocess.Popen:
    """oodgate from ``tree`` (this checkout, or ``--baseline``'s), always on this checkout's bundle."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OODGATE_INTRA_OP_THREADS": str(threads)}
    env["OODGATE_LOG_LEVEL"] = "warning"
    cmd = [sys.executable, "-m", "service.cli", "--port", str(port), "--models-root", str(REPO / "models")]
    return launch([*cmd, "--models", f"{MODEL_NAME}/1", "--runtime", "onnx"], tree, env, log)


def start_naive(port: int, threads: int, onnx: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PEERS_MODEL_ONNX": str(onnx), "PEERS_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "uvicorn", "benchmarks.naive_app:app", "--port", str(port), "--log-level", "warning"]
    return launch([*cmd, "--no-access-log"], REPO, env, log)


def write_mlserver_dir(root: Path, onnx: Path, port: int, max_batch_size: int, max_batch_time_s: float) -> Path:
    """The settings, model settings and runtime MLServer starts from, under ``root``."""
    model_dir = root / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "runtime.py").write_text(MLSERVER_RUNTIME)
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "runtime.BpdRuntime",
        "max_batch_size": max_batch_size,
        "max_batch_time": max_batch_time_s,
        "parameters": {"uri": str(onnx)},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "debug": False}
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    return root


def bpd_of(port: int, body: bytes) -> tuple[np.ndarray, set[str]]:
    """``bpd`` and the output names of one v2 JSON answer: the check that all three compute the same thing."""
    import httpx

    answer = httpx.post(f"http://127.0.0.1:{port}{V2_PATH}", content=body, timeout=60,
                        headers={"Content-Type": "application/json"})  # fmt: skip
    answer.raise_for_status()
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    return np.asarray(outputs["bpd"]["data"], dtype=np.float64), set(outputs)


def probe(port: int, kind: BodyKind, body: bytes, headers: dict[str, str]) -> int:
    """The status one request of this kind gets (0: no answer within a minute)."""
    import httpx

    try:
        answer = httpx.post(f"http://127.0.0.1:{port}{kind.path}", content=body, timeout=60,
                            headers={"Content-Type": kind.content_type, **headers})  # fmt: skip
    except httpx.HTTPError:
        return 0
    return answer.status_code


@dataclass
class Server:
    name: str
    label: str
    kinds: tuple[str, ...]  # body kinds tried (each is probed; unsupported ones are recorded)
    start: Callable[[int, Path], subprocess.Popen]  # (port, log file)


def servers(args, onnx: Path, tmp: Path) -> list[Server]:
    def mlserver(port: int, log: Path) -> subprocess.Popen:
        root = write_mlserver_dir(Path(tempfile.mkdtemp(dir=tmp)), onnx, port, args.mlserver_max_batch_size,
                                  args.mlserver_max_batch_time)  # fmt: skip
        env = {**os.environ, "PEERS_THREADS": str(args.threads)}
        env.pop("PYTHONPATH", None)
        return launch([str(PEERS_VENV / "bin" / "mlserver"), "start", str(root)], root, env, log)

    baseline = []
    if args.baseline is not None:
        tree = args.baseline.resolve()
        start = partial(start_oodgate, threads=args.threads, onnx=onnx, tree=tree)
        baseline = [Server("baseline", "oodgate baseline", tuple(BODY_KINDS), lambda p, log: start(p, log=log))]
    return baseline + [
        Server("oodgate", "oodgate", tuple(BODY_KINDS), lambda p, log: start_oodgate(p, args.threads, onnx, log)),
        Server("mlserver", "MLServer", ("v2-json", "v2-binary"), mlserver),
        Server("naive", "naive", ("v2-json",), lambda p, log: start_naive(p, args.threads, onnx, log)),
    ]


# ---- ceilings ---------------------------------------------------------------------------------------


class Ceilings:
    """In-process images/s at batch 32: one flow pass (what MLServer and naive run) and oodgate's whole
    worker step (two passes, every score and p-value). Measured in every round, beside the servers,
    so that a busy machine lowers the ceiling and the servers alike."""

    def __init__(self, onnx: Path, images: np.ndarray, threads: int) -> None:
        from service.artifact import load_manifest
        from service.calibration_file import load_detector
        from service.postprocess import make_postprocess
        from service.runtimes import OnnxGraph, load_runtime

        bundle = onnx.parent
        manifest = load_manifest(bundle)
        self.graph = OnnxGraph(onnx, "cpu", threads)
        self.runtime = load_runtime(manifest, bundle, "onnx", "cpu", threads)
        self.postprocess = make_postprocess(load_detector(manifest, bundle))
        self.batch = np.ascontiguousarray(images[:32])

    def _worker_step(self) -> None:
        self.postprocess(self.runtime.run(self.batch), self.batch)

    def _best(self, fn, seconds: float) -> float:
        fn()
        rates = []
        for _ in range(3):
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < seconds / 3:
                fn()
                count += len(self.batch)
            rates.append(count / (time.perf_counter() - start))
        return max(rates)

    def measure(self, seconds: float) -> dict[str, float]:
        return {
            "one_pass": self._best(lambda: self.graph(self.batch), seconds),
            "oodgate_worker": self._best(self._worker_step, seconds),
        }


# ---- report -----------------------------------------------------------------------------------------


def fmt_run(r: dict) -> str:
    return (
        f"{r['images_per_s']:.0f} | {r['min_images_per_s']:.0f}-{r['max_images_per_s']:.0f} | {r['p50_ms']:.1f} | "
        f"{r['p99_ms']:.1f} | {r['errors']} | {100 * r['steal']:.1f}%"
    )


def per_round(meta: dict, key: str) -> str:
    return ", ".join(f"{c[key]:.0f}" for c in meta["ceiling_rounds"])


def report(results: dict, meta: dict) -> str:
    m = meta["machine"]
    lines = [
        "# oodgate against its peers",
        "",
        f"Written by `benchmarks/peers.py` on {meta['when']} UTC in {meta['minutes']:.1f} min. Command:",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"One server at a time on loopback, the order rotating each round; {meta['rounds']} round(s) of "
        f"{meta['duration']:.0f} s per closed-loop point and {meta['open_duration']:.0f} s per open-loop point, "
        "medians shown with the range over rounds. The load generator (raw asyncio streams on uvloop, keep-alive, "
        "in the benchmark's own process) shares the cores with the server, the same for every server. "
        f"**Machine: a {m.get('cores')}-core VM ({m.get('cpu', '?')}) shared with other work** (the lead's OOD "
        f"experiments may run beside it): load average {meta['load_before']} before the run, {meta['load_after']} "
        "after; each server's turn records its own below, and every point its steal time.",
        "",
        "What each server does per image:",
        "",
        "- **oodgate** as shipped (`python -m service.cli --models fashion-glow/1 --runtime onnx`): two flow "
        "passes (the image and its upside-down copy, one graph call), all six outputs, the bundled default score "
        "(`combined`), its split-conformal p-value and the OOD decision; dynamic batching (32 images, 2 ms).",
        f"- **MLServer {meta['mlserver']}** (its own venv, with httptools and uvloop): adaptive batching "
        f"(`max_batch_size` {meta['mls_batch']} *requests*, `max_batch_time` {meta['mls_time']} s), default "
        "`parallel_workers` (1: the model runs in a second process), a custom runtime running one flow pass "
        "and returning `bpd` only.",
        "- **naive**: `benchmarks/naive_app.py`, FastAPI, stdlib JSON into a Python list, one ONNX Runtime call "
        "per request in the thread pool, `bpd` only.",
        "",
        f"All three run ONNX Runtime {m.get('onnxruntime')} on `models/fashion-glow/1/model.onnx` with the same "
        f"session settings (intra-op threads {meta['threads'] or 'cores'}, inter-op 1, no spinning, all graph "
        f"optimizations). Every server's `bpd` for the 1-image body matched in-process ONNX Runtime to "
        f"{meta['bpd_max_diff']:.1e}; oodgate's answers carried {', '.join(meta['oodgate_outputs'])}.",
        "",
        "In-process ceilings at batch 32 (best of three windows, measured at the start of every round, median "
        f"shown): one flow pass {meta['ceilings']['one_pass']:.0f} images/s (the most MLServer and naive could "
        f"reach; per round {per_round(meta, 'one_pass')}); oodgate's worker "
        f"step (two passes, every score and p-value) {meta['ceilings']['oodgate_worker']:.0f} images/s (the most "
        f"oodgate can reach; per round {per_round(meta, 'oodgate_worker')}).",
        "",
        "Body kinds a server did not answer with 200 when probed: "
        + ("; ".join(f"{k}: {v}" for k, v in meta["unsupported"].items()) or "none")
        + ".",
        "",
        "## Closed loop",
        "",
        "| images/request | c | server, body | images/s | range | p50 ms | p99 ms | non-200 | steal |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, c in meta["points"]:
        for r in results.values():
            point = r.get(f"closed/{n}x{c}")
            if point is not None:
                lines.append(f"| {n} | {c} | {point['label']} | {fmt_run(point)} |")
    lines += [
        "",
        "## Open loop (fixed arrival rate)",
        "",
        "| images/request | requests/s offered | images/s offered | server, body | images/s | range | p50 ms | "
        "p99 ms | non-200 | steal |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, rate in meta["open"]:
        for r in results.values():
            point = r.get(f"open/{n}x{rate:g}")
            if point is not None:
                lines.append(f"| {n} | {rate:g} | {n * rate:.0f} | {point['label']} | {fmt_run(point)} |")
    lines += ["", "## oodgate / MLServer (v2 JSON, closed loop)", ""]
    for n, c in meta["points"]:
        o, ml = (
            results.get("oodgate/v2-json", {}).get(f"closed/{n}x{c}"),
            results.get("mlserver/v2-json", {}).get(f"closed/{n}x{c}"),
        )
        if o and ml and ml["images_per_s"]:
            ratio = o["images_per_s"] / ml["images_per_s"]
            target = ""
            if c == 32 and n in (1, 32):
                met = ratio >= 1.5 and o["p99_ms"] <= ml["p99_ms"]
                target = f" - target >= 1.5x at equal or better p99: **{'met' if met else 'not met'}**"
            lines.append(
                f"- {n} image(s), c={c}: {o['images_per_s']:.0f} / {ml['images_per_s']:.0f} = **{ratio:.2f}x** "
                f"(p99 {o['p99_ms']:.1f} vs {ml['p99_ms']:.1f} ms){target}"
            )
    if meta["baseline"] is not None:
        lines += ["", f"## oodgate / oodgate baseline (`{meta['baseline']}`), same rounds", ""]
        for series in ("v2-json", "v2-binary", "npy"):
            ours, base = results.get(f"oodgate/{series}", {}), results.get(f"baseline/{series}", {})
            for key in [k for k in ours if k in base]:
                o, b = ours[key], base[key]
                lines.append(
                    f"- {BODY_KINDS[series].label}, {key}: {o['images_per_s']:.0f} / {b['images_per_s']:.0f} images/s "
                    f"= {o['images_per_s'] / b['images_per_s']:.2f}x (p99 {o['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms, "
                    f"non-200 {o['errors']} vs {b['errors']})"
                )
    worker = meta["ceilings"]["oodgate_worker"]
    lines += ["", "oodgate against its own in-process ceiling (target >= 0.9):", ""]
    for n in (1, 32):
        ours = results.get("oodgate/v2-json", {})
        best = max((r["images_per_s"] for k, r in ours.items() if k.startswith(f"closed/{n}x")), default=0.0)
        lines.append(f"- {n}-image v2 JSON requests, best closed-loop point: {best:.0f} / {worker:.0f} = "
                     f"{best / worker:.2f}")  # fmt: skip
    lines += ["", "## Load on the machine during each turn", "", "| round | server | load average before | after |"]
    lines += ["|---:|---|---|---|"]
    lines += [f"| {t['round']} | {t['server']} | {t['load_before']} | {t['load_after']} |" for t in meta["turns"]]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in m.items() if k != "hey"]
    lines += [f"- mlserver: {meta['mlserver']} (in `.peers-venv`, onnxruntime {meta['mls_ort']})", ""]
    lines += ["Raw numbers, every round: `docs/peers.json` (next to this page).", ""]
    return "\n".join(lines)


def write_report(out: Path, text: str, meta: dict, results: dict) -> None:
    """The page, and its raw numbers beside it as ``.json``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(text)


# ---- main -------------------------------------------------------------------------------------------


def setup() -> int:
    """MLServer in its own venv: it pins its own FastAPI/pydantic, which must not touch oodgate's."""
    import onnxruntime

    if not (PEERS_VENV / "bin" / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(PEERS_VENV / "bin" / "pip"), "install", f"mlserver=={MLSERVER_VERSION}", "httptools", "uvloop"]
    return subprocess.run([*pip, f"onnxruntime=={onnxruntime.__version__}", "numpy"]).returncode


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def parse_pairs(text: str, kind=int) -> list[tuple[int, float]]:
    return [(int(a), kind(b)) for a, b in (p.split("x") for p in text.split(",") if p)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help=f"create {PEERS_VENV.name} with MLServer, then exit")
    parser.add_argument("--quick", action="store_true", help="one round, short points (a smoke run)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per closed-loop point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--points", default="1x1,1x32,1x64,32x8,32x32,32x64", help="IMAGESxCONCURRENCY, closed loop")
    parser.add_argument("--body-points", default="1x32,32x32", help="points where the other body kinds run too")
    parser.add_argument("--open", default="1x200,32x10", help="IMAGESxREQUESTS_PER_S, open loop (v2 JSON)")
    parser.add_argument("--open-duration", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads for all (0: cores)")
    parser.add_argument("--mlserver-max-batch-size", type=int, default=32, help="requests, not images")
    parser.add_argument("--mlserver-max-batch-time", type=float, default=0.002, help="seconds")
    parser.add_argument("--servers", default="baseline,oodgate,mlserver,naive", help="which servers run")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout of oodgate (e.g. git archive main), run as a fourth server"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "peers.md")
    args = parser.parse_args(argv)
    if args.setup:
        return setup()
    if args.quick:
        args.rounds, args.duration, args.open_duration = 1, 2.0, 2.0
        args.points, args.body_points = "1x32,32x32", "1x32,32x32"
    if not (PEERS_VENV / "bin" / "mlserver").exists():
        print(f"no MLServer in {PEERS_VENV}: run with --setup first", file=sys.stderr)
        return 2
    from service.runtimes import OnnxGraph
    from training.data import load_fashion_mnist  # the benchmark reads the real test images; the service never does

    began = time.perf_counter()
    load_before = load_average()
    points = parse_pairs(args.points)
    body_points = set(parse_pairs(args.body_points))
    open_points = parse_pairs(args.open, float)
    onnx = REPO / "models" / MODEL_NAME / "1" / "model.onnx"
    images, _ = load_fashion_mnist("test")
    sizes = sorted({n for n, _ in points} | {n for n, _ in open_points})
    bodies = {(k, n): kind.build(images[:n]) for k, kind in BODY_KINDS.items() for n in sizes}
    reference = OnnxGraph(onnx, "cpu", args.threads)(images[:1])["bpd"].astype(np.float64)
    ceilings = Ceilings(onnx, images, args.threads)
    ceiling_rounds = []
    mls_version = subprocess.run([str(PEERS_VENV / "bin" / "python"), "-c",
                                  "import mlserver, onnxruntime; print(mlserver.__version__, onnxruntime.__version__)"],
                                 capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    runs: dict[str, dict[str, list[Run]]] = {}
    labels: dict[str, str] = {}
    unsupported: dict[str, str] = {}
    turns, bpd_diff, oodgate_outputs = [], 0.0, set()
    with tempfile.TemporaryDirectory(prefix="oodgate-peers-") as tmp:
        contestants = [server for server in servers(args, onnx, Path(tmp)) if server.name in args.servers.split(",")]
        for round_ in range(args.rounds):
            ceiling_rounds.append(ceilings.measure(3.0 if args.quick else 6.0))
            print(f"round {round_ + 1} in-process ceilings at batch 32: {ceiling_rounds[-1]}", flush=True)
            shift = round_ % len(contestants)
            for server in contestants[shift:] + contestants[:shift]:
                turn = {"round": round_ + 1, "server": server.name, "load_before": load_average()}
                port = free_port()
                log = Path(tmp) / f"{server.name}-{round_ + 1}.log"
                proc = server.start(port, log)
                try:
                    try:
                        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=180)
                    except (RuntimeError, TimeoutError):
                        print(log.read_text()[-4000:], file=sys.stderr)
                        raise
                    bpd, names = bpd_of(port, bodies[("v2-json", 1)][0])
                    bpd_diff = max(bpd_diff, float(np.abs(bpd - reference).max()))
                    if server.name == "oodgate":
                        oodgate_outputs = names
                    for key in server.kinds:
                        kind, series = BODY_KINDS[key], f"{server.name}/{key}"
                        requests = {n: http_request(kind, *bodies[(key, n)], port) for n in sizes}
                        status = probe(port, kind, *bodies[(key, sizes[0])])
                        if status != 200:
                            unsupported[f"{server.label} {kind.label}"] = f"HTTP {status}"
                            continue
                        closed_loop(port, requests[sizes[0]], 2, 1.0)  # warm-up
                        labels[series] = f"{server.label}, {kind.label}"
                        table = runs.setdefault(series, {})
                        todo = [(f"closed/{n}x{c}", n, partial(closed_loop, port, requests[n], c, args.duration))
                                for n, c in points if key == "v2-json" or (n, c) in body_points]  # fmt: skip
                        if key == "v2-json":
                            todo += [(f"open/{n}x{rate:g}", n, partial(open_loop, port, requests[n], rate,
                                                                       args.open_duration))
                                     for n, rate in open_points]  # fmt: skip
                        for name, n, load in todo:
                            run = measured(load, n)
                            table.setdefault(name, []).append(run)
                            print(f"round {round_ + 1} {series:18s} {name:14s}: {run.images_per_s:6.0f} img/s "
                                  f"p50 {run.p50_ms:7.1f} p99 {run.p99_ms:7.1f} ms non-200 {run.errors} "
                                  f"steal {100 * run.steal:.1f}%", flush=True)  # fmt: skip
                finally:
                    stop(proc)
                turn["load_after"] = load_average()
                turns.append(turn)
    results = {
        series: {key: {"label": labels[series], **median_run(rs)} for key, rs in table.items()}
        for series, table in runs.items()
    }
    meta = {
        "when": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
        "minutes": (time.perf_counter() - began) / 60,
        "command": " ".join([".venv/bin/python", "benchmarks/peers.py", *(argv if argv is not None else sys.argv[1:])]),
        "rounds": args.rounds,
        "duration": args.duration,
        "open_duration": args.open_duration,
        "points": points,
        "open": open_points,
        "threads": args.threads,
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
        "turns": turns,
        "ceilings": {k: float(np.median([c[k] for c in ceiling_rounds])) for k in ceiling_rounds[0]},
        "ceiling_rounds": ceiling_rounds,
        "baseline": None if args.baseline is None else str(args.baseline),
        "unsupported": unsupported,
        "oodgate_outputs": sorted(oodgate_outputs),
        "mlserver": mls_version[0],
        "mls_ort": mls_version[1],
        "mls_batch": args.mlserver_max_batch_size,
        "mls_time": args.mlserver_max_batch_time,
        "bpd_max_diff": bpd_diff,
    }
    write_report(args.out, report(results, meta), meta, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
