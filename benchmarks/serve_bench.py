"""Benchmark the scoring service against its two ceilings and write ``docs/benchmarks.md``.

What it measures, all on this machine, one load at a time (never two loads in
parallel, so nothing competes for the CPU):

1. **Model ceiling**: the same runtime the server picks (``service.runtimes``),
   in-process, scoring batches of ``max_batch_size`` images (and of 1) in a loop.
2. **HTTP ceiling**: a trivial FastAPI endpoint (``benchmarks/trivial_app.py``)
   taking the same request bodies, under the same uvicorn, driven by ``hey``.
3. **The service**: ``oodgate-serve`` with dynamic batching and a second one with
   batching disabled (both started, points interleaved), driven by ``hey`` as a closed
   loop (each of ``c`` workers sends its next request when the previous answer
   arrives) for each concurrency in the sweep, with 1-image and 32-image
   ``application/x-npy`` requests. Run it on a quiet machine: a background job
   (training!) makes every number, and every comparison, meaningless.

Per point: throughput (images/s), p50/p95/p99 latency from hey's per-request
CSV, average batch size (from the server's ``oodgate_batch_size`` histogram,
before/after) and errors (non-200 answers). Then it checks the issue's targets:
throughput >= 70% of the lower ceiling for both request shapes, dynamic batching
at least as fast as disabled at every concurrency, and p50 at concurrency 1 no
more than 10% slower than disabled.

    .venv/bin/python benchmarks/serve_bench.py                       # full sweep, default model
    .venv/bin/python benchmarks/serve_bench.py --quick --models-root /tmp/tiny --model tiny --out /tmp/b.md
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import math
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
sys.path.insert(0, str(REPO))

from service.artifact import discover_bundles, load_manifest  # noqa: E402
from service.runtimes import load_runtime  # noqa: E402


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
            proc.wait(60)
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


# ---- ceilings ---------------------------------------------------------------------------------------


def model_ceiling(bundle: Path, backend: str, device: str, threads: int, batch: int, seconds: float) -> float:
    """Best of three runs of ``seconds / 3``: the ceiling is what the runtime can do, so noise only lowers it."""
    manifest = load_manifest(bundle)
    runtime = load_runtime(manifest, bundle, backend, device, threads)
    images = test_images(batch, manifest.input.shape, seed=1)
    for _ in range(3):
        runtime.run(images)
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            runtime.run(images)
            done += batch
        best = max(best, done / (time.perf_counter() - start))
    return best


def pick_runtime(bundle: Path, runtime: str, device: str, threads: int) -> tuple[str, str]:
    """The backend and device the server will pick, decided in a child process so that this one
    loads only that backend (an ``auto`` probe would leave torch's thread pool in this process)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from service.artifact import load_manifest; from service.runtimes import load_runtime; "
        "b = Path(sys.argv[2]); r = load_runtime(load_manifest(b), b, sys.argv[3], sys.argv[4], int(sys.argv[5])); "
        "print(r.backend, r.device)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(bundle), runtime, device, str(threads)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[-2], out[-1]


def hey(url: str, body_file: Path, concurrency: int, seconds: float) -> dict:
    """One closed-loop hey run; per-request latencies from its CSV."""
    args = [
        "hey",
        "-z",
        f"{seconds}s",
        "-c",
        str(concurrency),
        "-m",
        "POST",
        "-T",
        "application/x-npy",
        "-D",
        str(body_file),
        "-t",
        "60",
        "-o",
        "csv",
        url,
    ]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    latencies = np.array([float(r["response-time"]) for r in rows])
    codes = [r["status-code"] for r in rows]
    ends = [float(r["offset"]) + float(r["response-time"]) for r in rows]
    ok = sum(1 for c in codes if c == "200")
    elapsed = max(ends) if ends else seconds
    return {
        "requests": len(rows),
        "ok": ok,
        "errors": len(rows) - ok,
        "elapsed": elapsed,
        "rps": ok / elapsed if elapsed else 0.0,
        "p50": float(np.percentile(latencies, 50)) if len(rows) else float("nan"),
        "p95": float(np.percentile(latencies, 95)) if len(rows) else float("nan"),
        "p99": float(np.percentile(latencies, 99)) if len(rows) else float("nan"),
    }


def http_ceiling(bodies: dict[int, Path], sweep: list[int], seconds: float) -> dict[int, dict]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.trivial_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    best = {}
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, path="/docs")
        for n, body in bodies.items():
            hey(f"{url}/score", body, 1, 1)  # warm the connection path
            runs = {c: hey(f"{url}/score", body, c, seconds) for c in sweep}
            c_best = max(runs, key=lambda c: runs[c]["rps"])
            best[n] = {"rps": runs[c_best]["rps"], "concurrency": c_best, "runs": runs}
            print(f"  HTTP ceiling, {n}-image body: {runs[c_best]['rps']:.0f} req/s at c={c_best}", flush=True)
    finally:
        stop(proc)
    return best


# ---- the service ------------------------------------------------------------------------------------


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_service(args, env_extra: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "OODGATE_MODELS_ROOT": str(args.models_root),
        "OODGATE_MODELS": args.model,
        "OODGATE_PORT": str(port),
        "OODGATE_MAX_BATCH_SIZE": str(args.max_batch_size),
        "OODGATE_MAX_QUEUE_IMAGES": str(4096),
        "OODGATE_LOG_LEVEL": "warning",
        **env_extra,
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "oodgate-serve")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def measure(url: str, body: Path, n: int, c: int, seconds: float) -> dict:
    """One sweep point against a running service, with the average batch size from its metrics."""
    before = httpx.get(f"{url}/metrics").text
    run = hey(f"{url}/score", body, c, seconds)
    after = httpx.get(f"{url}/metrics").text
    batches = metric_sum(after, "oodgate_batch_size_count") - metric_sum(before, "oodgate_batch_size_count")
    images = metric_sum(after, "oodgate_batch_size_sum") - metric_sum(before, "oodgate_batch_size_sum")
    run["avg_batch"] = images / batches if batches else float("nan")
    run["images_per_s"] = run["rps"] * n
    return run


def sweep(args, common: dict, bodies: dict[int, Path]) -> tuple[dict, dict]:
    """Every point on both services, interleaved, ``--repeats`` times, each time on fresh processes.

    Both services are up at once (an idle one costs nothing) and each point runs on one, then at once
    on the other, who goes first alternating, so slow drifts of the machine favour neither. Each repeat
    starts a new pair of processes: three servers of the *same* configuration side by side on this VM
    (``hey -z 4s -c 1`` each, one-image bodies, three rounds) differed by up to 30% in requests/s,
    process against process, which one pair per sweep would have reported as a gap between the modes.
    """
    runs: dict[str, dict] = {"dynamic": {}, "disabled": {}}
    info: dict = {}
    turn = 0
    for repeat in range(args.repeats):
        procs = {}
        try:
            modes = (("dynamic", "true"), ("disabled", "false"))
            for mode, flag in modes if repeat % 2 == 0 else modes[::-1]:  # who starts first alternates too
                procs[mode] = start_service(args, {**common, "OODGATE_DYNAMIC_BATCHING": flag})
            procs = {mode: procs[mode] for mode, _ in modes}
            info = httpx.get(f"{procs['dynamic'][1]}/models").json()["models"][0]
            print(f" repeat {repeat + 1} of {args.repeats} (fresh processes)", flush=True)
            for n, body in bodies.items():
                for _, url in procs.values():
                    hey(f"{url}/score", body, 2, 1)  # warm-up
                for c in args.concurrency:
                    order = list(procs.items())
                    for mode, (_, url) in order if turn % 2 == 0 else order[::-1]:  # alternate who goes first
                        run = measure(url, body, n, c, args.duration)
                        runs[mode].setdefault((n, c), []).append(run)
                        print(
                            f"  {mode:8s} n={n:2d} c={c:2d}: {run['images_per_s']:8.0f} img/s"
                            f"  p50 {run['p50'] * 1000:7.1f} ms"
                            f"  p99 {run['p99'] * 1000:7.1f} ms  batch {run['avg_batch']:5.1f}  errors {run['errors']}",
                            flush=True,
                        )
                    turn += 1
        finally:
            for proc, _ in procs.values():
                stop(proc)
    return {mode: {key: summarize(rs) for key, rs in table.items()} for mode, table in runs.items()}, info


def summarize(runs: list[dict]) -> dict:
    """One point of one mode over its repeats: medians, plus the best and worst throughput."""
    rates = [r["images_per_s"] for r in runs]
    out = {key: float(np.median([r[key] for r in runs])) for key in ("images_per_s", "rps", "p50", "p95", "p99")}
    out["avg_batch"] = float(np.median([r["avg_batch"] for r in runs]))
    out["errors"] = sum(r["errors"] for r in runs)
    out["min_images_per_s"], out["max_images_per_s"] = min(rates), max(rates)
    out["repeats"] = [{k: r[k] for k in ("images_per_s", "p50", "p99", "avg_batch")} for r in runs]
    return out


def pooled_relative_sd(tables: list[dict]) -> float:
    """Run-to-run sd of one run's throughput, relative, pooled over every point and mode of the sweep.

    Computed on log throughput: each repeat's deviation from its point's mean, squared, summed, and
    divided by the degrees of freedom (repeats - 1 per point). On this shared VM it is several percent.
    """
    squares, dof = 0.0, 0
    for table in tables:
        for point in table.values():
            logs = np.log([r["images_per_s"] for r in point["repeats"] if r["images_per_s"] > 0])
            if len(logs) > 1:
                squares += float(((logs - logs.mean()) ** 2).sum())
                dof += len(logs) - 1
    return math.sqrt(squares / dof) if dof else math.nan


def slower_beyond_noise(fast: dict, slow: dict, sd: float, z: float = 1.645) -> bool:
    """``fast`` really slower than ``slow``: a one-sided test at 5% on the medians' log ratio.

    Without repeats (``sd`` unknown) any gap counts.
    """
    gap = math.log(slow["images_per_s"] / fast["images_per_s"])
    if not math.isfinite(sd):
        return gap > 0
    n_fast, n_slow = len(fast["repeats"]), len(slow["repeats"])
    return gap > z * sd * math.sqrt(1 / n_fast + 1 / n_slow)


# ---- report -----------------------------------------------------------------------------------------


def report(args, info, host, model_ceil, http_ceil, dynamic, disabled, command) -> str:
    lines = ["# Serving benchmark", ""]
    lines.append(f"Written by `benchmarks/serve_bench.py` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.")
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in host.items()]
    lines += [
        f"- model: `{info['name']}/{info['version']}`, input {info['input']['shape']}, "
        f"runtime {info['backend']} on {info['device']}",
        f"- service: max_batch_size {args.max_batch_size}, max_batch_delay_ms {args.max_batch_delay_ms}, "
        f"intra_op_threads {args.intra_op_threads or 'all cores'}, "
        f"one uvicorn worker process, `application/x-npy` bodies",
        "",
        "## Commands",
        "",
        "```bash",
        command,
        "# each point: hey -z <duration>s -c <concurrency> -m POST -T application/x-npy -D <body.npy> -o csv "
        "http://127.0.0.1:<port>/score",
        "```",
        "",
        "## Ceilings",
        "",
        "| ceiling | how | result |",
        "|---|---|---|",
    ]
    for batch, rate in model_ceil.items():
        lines.append(
            f"| model, batch {batch} | `{info['backend']}` runtime in-process, "
            f"best of 3 loops of {args.duration / 3:.1f} s "
            f"| {rate:.0f} images/s |"
        )
    for n, best in http_ceil.items():
        lines.append(
            f"| HTTP, {n}-image body | trivial FastAPI endpoint, same uvicorn, hey, best over the sweep "
            f"(c={best['concurrency']}) | {best['rps']:.0f} req/s = {best['rps'] * n:.0f} images/s |"
        )
    verdicts = []
    noise = pooled_relative_sd([dynamic, disabled])
    for n in args.shapes:
        lines += [
            "",
            f"## {n}-image requests",
            "",
            "| c | mode | images/s | range over repeats | req/s | p50 ms | p95 ms | p99 ms | avg batch | errors |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in args.concurrency:
            for mode, table in (("dynamic", dynamic), ("disabled", disabled)):
                r = table[(n, c)]
                lines.append(
                    f"| {c} | {mode} | {r['images_per_s']:.0f} | "
                    f"{r['min_images_per_s']:.0f}-{r['max_images_per_s']:.0f} | {r['rps']:.1f} | "
                    f"{r['p50'] * 1000:.1f} | "
                    f"{r['p95'] * 1000:.1f} | {r['p99'] * 1000:.1f} | {r['avg_batch']:.1f} | {r['errors']} |"
                )
        lower = min(model_ceil[args.max_batch_size], http_ceil[n]["rps"] * n)
        best = max(dynamic[(n, c)]["max_images_per_s"] for c in args.concurrency)
        verdicts.append(
            (
                f"{n}-image requests: best throughput (best run) {best:.0f} images/s = {100 * best / lower:.0f}% "
                f"of the lower ceiling ({lower:.0f} images/s)",
                best >= 0.7 * lower,
            )
        )
        behind = [c for c in args.concurrency if dynamic[(n, c)]["images_per_s"] < disabled[(n, c)]["images_per_s"]]
        slower = [c for c in behind if slower_beyond_noise(dynamic[(n, c)], disabled[(n, c)], noise)]
        ties = [c for c in behind if c not in slower]
        verdicts.append(
            (
                f"{n}-image requests: dynamic batching at least as fast as disabled at every concurrency"
                + (f" (slower at c={slower})" if slower else "")
                + (f" (behind, but within run-to-run noise, at c={ties})" if ties else ""),
                not slower,
            )
        )
        if 1 in args.concurrency:
            d, o = dynamic[(n, 1)]["p50"], disabled[(n, 1)]["p50"]
            verdicts.append(
                (
                    f"{n}-image requests: p50 at c=1 {d * 1000:.2f} ms vs {o * 1000:.2f} ms disabled "
                    f"({100 * (d / o - 1):+.1f}%)",
                    d <= 1.1 * o,
                )
            )
    lines += ["", "## Targets", ""]
    lines += [f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in verdicts]
    lines += [
        "",
        f"Each point is the median of {args.repeats} runs per mode, each on a fresh pair of server processes, "
        "the modes interleaved; the range column "
        "shows the worst and best run. Throughput against the ceilings uses the best run, as the ceilings "
        "use the best loop (interference from other tenants only ever lowers a figure). Dynamic batching "
        "counts as slower than disabled only where a one-sided test at 5% says so: the medians' log ratio "
        f"beyond 1.645 standard errors, from the run-to-run sd pooled over the whole sweep ({100 * noise:.1f}% "
        "of a run's throughput here).",
    ]
    raw = args.out.with_suffix(".json")
    shown = raw.relative_to(REPO) if raw.is_relative_to(REPO) else raw
    lines += ["", f"Raw numbers: `{shown}`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-root", type=Path, default=REPO / "models")
    parser.add_argument("--model", default="fashion-glow", help="name or name/version")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0)
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="threads per batch, for the service and the model ceiling (0: cores)",
    )
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument("--shapes", default="1,32", help="images per request")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per point and mode, interleaved")
    parser.add_argument("--quick", action="store_true", help="smoke test: c=1,4, 2 s per point")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.duration, args.repeats = "1,4", 2.0, 1
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.shapes = [int(n) for n in args.shapes.split(",")]
    if shutil.which("hey") is None:
        print("needs hey: apt-get install -y hey", file=sys.stderr)
        return 2
    name, _, version = args.model.partition("/")
    bundles = [
        b for b in discover_bundles(args.models_root) if b.parent.name == name and (not version or b.name == version)
    ]
    if not bundles:
        print(f"no bundle {args.model} under {args.models_root}", file=sys.stderr)
        return 2
    bundle = bundles[-1]
    manifest = load_manifest(bundle)
    command = "MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 " + " ".join(
        [".venv/bin/python", "benchmarks/serve_bench.py", *(argv if argv is not None else sys.argv[1:])]
    )
    host = machine()
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"oodgate-bench-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    bodies = {}
    for n in args.shapes:
        bodies[n] = workdir / f"body-{n}.npy"
        bodies[n].write_bytes(npy_body(test_images(n, manifest.input.shape, seed=n)))

    print("model ceiling (in-process runtime)...", flush=True)
    backend, device = pick_runtime(bundle, args.runtime, args.device, args.intra_op_threads)
    model_ceil = {
        b: model_ceiling(bundle, backend, device, args.intra_op_threads, b, args.duration)
        for b in sorted({1, args.max_batch_size})
    }
    for b, rate in model_ceil.items():
        print(f"  batch {b}: {rate:.0f} images/s", flush=True)
    print("HTTP ceiling (trivial FastAPI endpoint)...", flush=True)
    http_ceil = http_ceiling(bodies, args.concurrency, args.duration)
    print("service, dynamic batching and batching disabled, interleaved...", flush=True)
    common = {
        "OODGATE_DEVICE": args.device,
        "OODGATE_RUNTIME": backend,
        "OODGATE_MAX_BATCH_DELAY_MS": str(args.max_batch_delay_ms),
        "OODGATE_INTRA_OP_THREADS": str(args.intra_op_threads),
    }
    tables, info = sweep(args, common, bodies)
    dynamic, disabled = tables["dynamic"], tables["disabled"]

    text = report(args, info, host, model_ceil, http_ceil, dynamic, disabled, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    raw = {
        "machine": host,
        "model": info,
        "model_ceiling_images_per_s": model_ceil,
        "http_ceiling": {n: {k: v for k, v in b.items() if k != "runs"} for n, b in http_ceil.items()},
        "dynamic": {f"{n}x{c}": r for (n, c), r in dynamic.items()},
        "disabled": {f"{n}x{c}": r for (n, c), r in disabled.items()},
    }
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
