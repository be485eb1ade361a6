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

    python3 -m venv .peers-venv && .venv/bin/python -m benchmarks.peers --setup   # once
    .venv/bin/python -m benchmarks.peers            # about 8 minutes
    .venv/bin/python -m benchmarks.peers --quick    # about 1.5 minutes, one round, --out /tmp/...
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    REPO,
    best_rate,
    command_line,
    free_port,
    launch,
    launch_oodgate,
    load_average,
    machine,
    stop,
    wait_ready,
    write_report,
)
from benchmarks.loadgen import (
    BODY_KINDS,
    MODEL_NAME,
    V2_PATH,
    BodyKind,
    Run,
    closed_loop,
    http_request,
    measured,
    median_run,
    open_loop,
)
from benchmarks.peers_report import report

PEERS_VENV = REPO / ".peers-venv"
MLSERVER_VERSION = "1.7.1"

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


# ---- servers ----------------------------------------------------------------------------------------


def start_oodgate(port: int, threads: int, log: Path, tree: Path = REPO) -> subprocess.Popen:
    """oodgate from ``tree`` (this checkout, or ``--baseline``'s), always on this checkout's bundle."""
    return launch_oodgate(port, f"{MODEL_NAME}/1", log, tree, OODGATE_INTRA_OP_THREADS=str(threads))


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
        start = partial(start_oodgate, threads=args.threads, tree=tree)
        baseline = [Server("baseline", "oodgate baseline", tuple(BODY_KINDS), lambda p, log: start(p, log=log))]
    return baseline + [
        Server("oodgate", "oodgate", tuple(BODY_KINDS), lambda p, log: start_oodgate(p, args.threads, log)),
        Server("mlserver", "MLServer", ("v2-json", "v2-binary"), mlserver),
        Server("naive", "naive", ("v2-json",), lambda p, log: start_naive(p, args.threads, onnx, log)),
    ]


# ---- ceilings ---------------------------------------------------------------------------------------


class Ceilings:
    """In-process images/s at batch 32: one flow pass (what MLServer and naive run) and oodgate's whole
    worker step (two passes, every score and p-value). Measured in every round, beside the servers,
    so that a busy machine lowers the ceiling and the servers alike.

    With ``threads`` 0 each is measured at every intra-op thread count from 1 to the cores and the best
    is the ceiling: a server is held to the most its graph work can do in-process, and the page shows
    what each thread count gives (on a shared machine the second thread gains only while no other
    work holds the other core)."""

    def __init__(self, onnx: Path, images: np.ndarray, threads: int) -> None:
        from service.artifact import load_manifest
        from service.calibration_file import load_detector
        from service.postprocess import make_postprocess
        from service.runtimes import OnnxGraph, load_runtime

        bundle = onnx.parent
        manifest = load_manifest(bundle)
        self.counts = [threads] if threads else list(range(1, (os.cpu_count() or 1) + 1))
        self.graphs = {t: OnnxGraph(onnx, "cpu", t) for t in self.counts}
        self.runtimes = {t: load_runtime(manifest, bundle, "onnx", "cpu", t) for t in self.counts}
        self.postprocess = make_postprocess(load_detector(manifest, bundle))
        self.batch = np.ascontiguousarray(images[:32])

    def _worker_step(self, runtime) -> None:
        self.postprocess(runtime.run(self.batch), self.batch)

    def _best(self, fn, seconds: float) -> float:
        """Best of three windows of ``seconds / 3``: noise only lowers a ceiling."""
        return best_rate(fn, len(self.batch), 3, seconds / 3)

    def measure(self, seconds: float) -> dict[str, float]:
        """The best over thread counts of each, plus each count's own figure (``oodgate_worker_2t``...)."""
        rates: dict[str, float] = {}
        for t in self.counts:
            rates[f"one_pass_{t}t"] = self._best(lambda g=self.graphs[t]: g(self.batch), seconds)
            rates[f"oodgate_worker_{t}t"] = self._best(partial(self._worker_step, self.runtimes[t]), seconds)
        best = {kind: max(rates[f"{kind}_{t}t"] for t in self.counts) for kind in ("one_pass", "oodgate_worker")}
        return {**best, **rates}


# ---- main -------------------------------------------------------------------------------------------


def setup() -> int:
    """MLServer in its own venv: it pins its own FastAPI/pydantic, which must not touch oodgate's."""
    import onnxruntime

    if not (PEERS_VENV / "bin" / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(PEERS_VENV / "bin" / "pip"), "install", f"mlserver=={MLSERVER_VERSION}", "httptools", "uvloop"]
    return subprocess.run([*pip, f"onnxruntime=={onnxruntime.__version__}", "numpy"]).returncode


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
    with_mlserver = "mlserver" in args.servers.split(",")
    if with_mlserver and not (PEERS_VENV / "bin" / "mlserver").exists():
        print(f"no MLServer in {PEERS_VENV}: run with --setup first (or leave it out of --servers)", file=sys.stderr)
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
    mls_version = ["not run", "-"]
    if with_mlserver:
        versions = "import mlserver, onnxruntime; print(mlserver.__version__, onnxruntime.__version__)"
        mls_version = subprocess.run(
            [str(PEERS_VENV / "bin" / "python"), "-c", versions], capture_output=True, text=True, check=True
        ).stdout.split()
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
        "command": command_line("benchmarks.peers", argv),
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
