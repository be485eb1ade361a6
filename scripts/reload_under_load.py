"""Reload models under load: count what clients lose while versions come and go (issue 14).

Starts ``oodgate-serve`` with ``OODGATE_POLL_MODELS_S`` on a temporary copy of the
default model (version 1) and drives it with ``--clients`` closed-loop clients
sending one-image ``.npy`` requests that name no version (so they get the latest).
Meanwhile, on disk:

1. version 2 is published (copied in under a staging name, then renamed in): it must
   be loaded and warmed beside 1, then switched to;
2. version 1 is deleted: it leaves the table, what it had queued finishes;
3. a corrupt version 3 (a truncated graph) is published: it must be refused while 2
   serves on.

Every request must be answered 200 (lost = 0, non-200 = 0). Prints the counts, the
versions that answered, and the seconds from publishing version 2 to its first answer.

    python -m scripts.reload_under_load

Loopback only; bounded by ``--phase-s`` per step (four steps).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from benchmarks.harness import REPO, free_port

MODEL = "fashion-glow"


def publish(root: Path, source: Path, version: str, truncate_graph: bool = False) -> None:
    staging = root / f".staging-{version}"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    (staging / "manifest.json").write_text(json.dumps(manifest))
    if truncate_graph:
        graph = staging / "model.onnx"
        graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    staging.rename(root / MODEL / version)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--phase-s", type=float, default=6.0)
    parser.add_argument("--poll-s", type=float, default=0.5)
    args = parser.parse_args()
    source = REPO / "models" / MODEL / "1"
    image = np.random.default_rng(0).integers(0, 256, size=(1, 28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, image, allow_pickle=False)
    body = buffer.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / MODEL).mkdir()
        shutil.copytree(source, root / MODEL / "1")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OODGATE_LOG_LEVEL": "info",
            "OODGATE_RUNTIME": "onnx",
            "OODGATE_POLL_MODELS_S": str(args.poll_s),
        }
        command = [sys.executable, "-m", "service.cli", "--port", str(port), "--models-root", str(root)]
        log_path = root / "server.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        tally: Counter = Counter()
        versions: Counter = Counter()
        first_answer: dict[str, float] = {}
        lock = threading.Lock()
        stop = threading.Event()
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

            def client():
                with httpx.Client(base_url=url, timeout=30) as http:
                    while not stop.is_set():
                        try:
                            response = http.post("/score", content=body, headers={"content-type": "application/x-npy"})
                            outcome, version = response.status_code, response.json().get("version")
                        except httpx.HTTPError as exc:
                            outcome, version = f"lost ({type(exc).__name__})", None
                        with lock:
                            tally[outcome] += 1
                            if version:
                                versions[version] += 1
                                first_answer.setdefault(version, time.monotonic())

            threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
            for t in threads:
                t.start()
            time.sleep(args.phase_s)
            published = time.monotonic()
            publish(root, source, "2")
            time.sleep(args.phase_s)
            shutil.rmtree(root / MODEL / "1")
            time.sleep(args.phase_s)
            publish(root, source, "3", truncate_graph=True)
            time.sleep(args.phase_s)
            stop.set()
            for t in threads:
                t.join(30)
            index = httpx.post(f"{url}/v2/repository/index").json()
            loads = [
                line
                for line in httpx.get(f"{url}/metrics").text.splitlines()
                if line.startswith("oodgate_model_loads_total")
            ]
        finally:
            stop.set()
            proc.terminate()
            proc.wait(60)
        events = [
            line.split(": ", 1)[-1]
            for line in log_path.read_text().splitlines()
            if "service.repository" in line or "fell back" in line
        ]
    sent = sum(tally.values())
    lost = sum(v for k, v in tally.items() if str(k).startswith("lost"))
    summary = {
        "sent": sent,
        "answered": sent - lost,
        "lost": lost,
        "by_status": {str(k): v for k, v in tally.items()},
        "answered_by_version": dict(sorted(versions.items())),
        "seconds_from_publishing_2_to_its_first_answer": round(first_answer.get("2", float("nan")) - published, 2),
        "index_at_end": [(r["version"], r["state"], r["reason"][:80]) for r in index],
        "model_loads_total": loads,
        "log": events,
    }
    print(json.dumps(summary, indent=1))
    return 0 if lost == 0 and set(tally) == {200} else 1


if __name__ == "__main__":
    raise SystemExit(main())
