"""Does throughput add over replicas on one host? Writes ``docs/replicas.json`` (read by ``docs/scale-out.md``).

One ``oodgate-serve --runtime onnx`` with ONNX Runtime on every core, against N replicas on the
same host, each with ``cores / N`` intra-op threads (what a Pod with that CPU request gets from
``k8s/configmap.yaml``), the closed loop of ``benchmarks/peers.py`` spreading its connections
over the replicas as a Service spreads connections over Pods. 1- and 32-image
``application/x-npy`` requests of the bundled model at c=32; the layouts alternate over rounds.
On one host the cores are the limit, so this measures what replication costs or gains when
no cores are added; across hosts each replica brings its own (see docs/scale-out.md).

    .venv/bin/python -m benchmarks.replicas     # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    REPO,
    command_line,
    free_port,
    launch_oodgate,
    load_average,
    stop,
    test_images,
    wait_ready,
)
from benchmarks.loadgen import BODY_KINDS, closed_loop, http_request, measured
from service.artifact import load_manifest


def start_replicas(count: int, threads: int, model: str, tmp: Path) -> tuple[list, list[int]]:
    procs, ports = [], []
    for i in range(count):
        port = free_port()
        log = tmp / f"r{count}-{i}.log"
        procs.append(launch_oodgate(port, model, log, OODGATE_INTRA_OP_THREADS=str(threads)))
        ports.append(port)
    for proc, port in zip(procs, ports, strict=True):
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=180)
    return procs, ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fashion-glow/1")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "replicas.json")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    manifest = load_manifest(REPO / "models" / args.model)
    images = test_images(32, manifest.input.shape)
    kind = BODY_KINDS["npy"]
    layouts = [int(n) for n in args.replicas.split(",")]
    runs: dict[str, list] = {}
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="oodgate-replicas-") as tmp:
        for round_ in range(args.rounds):
            for count in layouts if round_ % 2 == 0 else layouts[::-1]:
                threads = max(1, cores // count)
                procs, ports = start_replicas(count, threads, args.model, Path(tmp))
                try:
                    for n in (1, 32):
                        request = http_request(kind, *kind.build(images[:n]), ports[0])
                        closed_loop(ports, request, 4, 1.0)  # warm-up
                        run = measured(partial(closed_loop, ports, request, args.concurrency, args.seconds), n)
                        runs.setdefault(f"{count} replica(s) x {threads} thread(s), {n} image(s)", []).append(
                            run.__dict__
                        )
                        print(f"round {round_ + 1}: {count} x {threads} threads, {n:2d} img: "
                              f"{run.images_per_s:6.0f} img/s p99 {run.p99_ms:7.1f} ms", flush=True)  # fmt: skip
                finally:
                    for proc in procs:
                        stop(proc)
    results = {
        key: {
            "images_per_s": float(np.median([r["images_per_s"] for r in rs])),
            "p99_ms": float(np.median([r["p99_ms"] for r in rs])),
            "errors": sum(r["errors"] for r in rs),
            "rounds": rs,
        }
        for key, rs in runs.items()
    }
    meta = {
        "when": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
        "command": command_line("benchmarks.replicas", argv),
        "cores": cores,
        "concurrency": args.concurrency,
        "load_before": load_before,
        "load_after": load_average(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    for key, r in results.items():
        print(f"{key}: {r['images_per_s']:.0f} img/s, p99 {r['p99_ms']:.1f} ms, non-200 {r['errors']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
