"""How oodgate's cost grows with concurrency and image size; writes ``docs/cost-growth.md`` and ``.json``.

For each bundle (``fashion-glow/1``: 28x28x1, ``clipart-glow/1``: 32x32x3), one
``oodgate-serve --runtime onnx`` as shipped, driven by the closed loop of
``benchmarks/peers.py`` with ``application/x-npy`` bodies of 1 and 32 images at each
concurrency of the sweep (1..256). Per point: images/s of 200 answers, p50/p99, non-200
answers, steal time. Memory per queued image: while the heaviest point runs, the server's
RSS (``/proc/<pid>/status``) and its queue depth (the ``oodgate_queue_images`` gauge) are
sampled every 50 ms; the figure is (peak RSS - RSS before the sweep) / peak queued images,
next to the bytes the pixels themselves take. Images: blocky random pixels of the bundle's
shape (``serve_bench.test_images``), the same for every point.

    .venv/bin/python -m benchmarks.cost_growth            # about 3 minutes on 2 cores
    .venv/bin/python -m benchmarks.cost_growth --quick --out /tmp/cost.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import threading
from functools import partial
from pathlib import Path

import httpx
import numpy as np

from benchmarks.harness import (
    REPO,
    command_line,
    free_port,
    launch_oodgate,
    load_average,
    machine,
    metric_sum,
    stop,
    test_images,
    wait_ready,
    write_report,
)
from benchmarks.loadgen import BODY_KINDS, closed_loop, http_request, measured
from service.artifact import load_manifest
from service.runtimes import BACKGROUND_KEYS, manifest_orientation

QUEUE_GAUGE = "oodgate_queue_images"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class MemorySampler:
    """Samples (RSS, queued images) of a server every ``period`` seconds on a thread, while in a ``with``."""

    def __init__(self, pid: int, url: str, period: float = 0.05) -> None:
        self.pid, self.url, self.period = pid, url, period
        self.samples: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(self.period):
                try:
                    queued = metric_sum(client.get(f"{self.url}/metrics").text, QUEUE_GAUGE)
                except httpx.HTTPError:
                    continue
                self.samples.append((rss_bytes(self.pid), queued))

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def sweep_model(model: str, concurrencies: list[int], shapes: list[int], seconds: float, tmp: Path) -> dict:
    bundle = REPO / "models" / model
    manifest = load_manifest(bundle)
    images = test_images(max(shapes), manifest.input.shape)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = launch_oodgate(port, model, tmp / f"{model.replace('/', '-')}.log")
    kind = BODY_KINDS["npy"]
    points, memory = {}, {}
    try:
        wait_ready(url, proc, timeout=180)
        closed_loop(port, http_request(kind, *kind.build(images[:1]), port), 2, 1.0)  # warm-up
        rss_idle = rss_bytes(proc.pid)
        for n in shapes:
            request = http_request(kind, *kind.build(images[:n]), port)
            for c in concurrencies:
                heaviest = n == max(shapes) and c == max(concurrencies)
                if heaviest:
                    with MemorySampler(proc.pid, url) as sampler:
                        run = measured(partial(closed_loop, port, request, c, seconds), n)
                    peak_rss = max(r for r, _ in sampler.samples)
                    peak_queue = max(q for _, q in sampler.samples)
                    memory = {
                        "rss_idle_mib": rss_idle / 2**20,
                        "rss_peak_mib": peak_rss / 2**20,
                        "peak_queued_images": peak_queue,
                        "bytes_per_queued_image": (peak_rss - rss_idle) / peak_queue if peak_queue else float("nan"),
                        "pixel_bytes_per_image": int(np.prod(manifest.input.shape)),
                        "npy_body_bytes_per_image": len(kind.build(images[:n])[0]) / n,
                        "samples": len(sampler.samples),
                    }
                else:
                    run = measured(partial(closed_loop, port, request, c, seconds), n)
                points[f"{n}x{c}"] = run.__dict__
                print(f"{model} {n:2d} img c={c:3d}: {run.images_per_s:6.0f} img/s p50 {run.p50_ms:7.1f} "
                      f"p99 {run.p99_ms:7.1f} ms non-200 {run.errors}", flush=True)  # fmt: skip
    finally:
        stop(proc)
    # the flow, its upside-down pass when the calibration uses orientation, and a background flow if any
    background = any(key in manifest.files for key in BACKGROUND_KEYS.values())
    passes = (2 if manifest_orientation(manifest) else 1) + int(background)
    return {"shape": list(manifest.input.shape), "passes": passes, "points": points, "memory": memory}


def report(results: dict, meta: dict) -> str:
    lines = [
        "# Cost growth: concurrency and image size",
        "",
        f"Written by `benchmarks/cost_growth.py` on {meta['when']} UTC. Command:",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"**Machine: a {meta['machine'].get('cores')}-core VM shared with other work** (the lead's experiments): "
        f"load average {meta['load_before']} before, {meta['load_after']} after. One `oodgate-serve --runtime onnx` "
        f"per bundle as shipped (dynamic batching 32 images / 2 ms, queue bound 4,096 images, the flow passes its "
        "calibration asks for, every score and p-value), `application/x-npy` bodies, closed loop of "
        f"`benchmarks/peers.py` (in the same machine), {meta['seconds']:.0f} s per point, one run per point.",
        "",
    ]
    for model, r in results.items():
        shape = "x".join(str(v) for v in (r["shape"][1], r["shape"][2], r["shape"][0]))
        lines += [
            f"## {model} ({shape}, {r['passes']} graph pass(es) per image)",
            "",
            "| images/request | c | images/s | p50 ms | p99 ms | non-200 |",
        ]
        lines += ["|---:|---:|---:|---:|---:|---:|"]
        for key, p in r["points"].items():
            n, c = key.split("x")
            lines.append(
                f"| {n} | {c} | {p['images_per_s']:.0f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['errors']} |"
            )
        m = r["memory"]
        if m:
            lines += [
                "",
                f"Memory while the heaviest point ran: RSS {m['rss_idle_mib']:.0f} MiB before the sweep, peak "
                f"{m['rss_peak_mib']:.0f} MiB with at most {m['peak_queued_images']:.0f} images queued: "
                f"**{m['bytes_per_queued_image'] / 1024:.1f} KiB per queued image** (an upper bound: it also holds "
                f"request bodies, in-flight answers and whatever the allocator keeps), against "
                f"{m['pixel_bytes_per_image']} bytes of pixels and {m['npy_body_bytes_per_image']:.0f} bytes of npy "
                f"body per image ({m['samples']} samples).",
            ]
        lines.append("")
    lines += ["Raw numbers: `docs/cost-growth.json`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="fashion-glow/1,clipart-glow/1")
    parser.add_argument("--concurrency", default="1,4,16,64,256")
    parser.add_argument("--shapes", default="1,32", help="images per request")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="c=1,16 only, 1.5 s per point")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "cost-growth.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.seconds = "1,16", 1.5
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    shapes = [int(n) for n in args.shapes.split(",")]
    load_before = load_average()
    results = {}
    with tempfile.TemporaryDirectory(prefix="oodgate-cost-") as tmp:
        for model in args.models.split(","):
            results[model] = sweep_model(model, concurrencies, shapes, args.seconds, Path(tmp))
    meta = {
        "when": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
        "command": command_line("benchmarks.cost_growth", argv),
        "seconds": args.seconds,
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    write_report(args.out, report(results, meta), meta, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
