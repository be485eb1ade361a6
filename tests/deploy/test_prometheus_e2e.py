"""End to end: a real Prometheus (Debian package ``prometheus``) scrapes a real ``oodgate-serve``.

Both run as subprocesses on loopback and free ports. The test scores a known number of
images, then asks Prometheus with PromQL how many images were scored: the answer must be
that number. Every wait is bounded; both processes are stopped whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from tests.conftest import require_tool
from tests.deploy.conftest import ROOT
from tests.sidecar.servers import free_port, images, wait_for

SENT = [3, 2, 2]  # images per request


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def oodgate(tiny_models_root, tmp_path_factory):
    port = free_port()
    env = {
        **os.environ,
        "OODGATE_MODELS_ROOT": str(tiny_models_root),
        "OODGATE_RUNTIME": "onnx",
        "OODGATE_MAX_BATCH_SIZE": "4",
        "OODGATE_LOG_LEVEL": "warning",
    }
    log = (tmp_path_factory.mktemp("oodgate") / "oodgate.log").open("w")
    cmd = [sys.executable, "-m", "service.cli", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/health/ready", timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="module")
def prometheus(oodgate, tmp_path_factory):
    binary = require_tool("prometheus", "prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "deploy" / "prometheus" / "alerts.yml")],
        "scrape_configs": [{"job_name": "oodgate", "static_configs": [{"targets": [oodgate]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/-/ready", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


def query(prometheus: str, promql: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]


def wait_for_value(prometheus: str, promql: str, expected: float, timeout: float = 60.0) -> float | None:
    """Poll until the query's single value equals ``expected`` (bounded); return the last value seen."""
    end, last = time.monotonic() + timeout, None
    while time.monotonic() < end:
        result = query(prometheus, promql)
        if result:
            last = float(result[0]["value"][1])
            if last == expected:
                return last
        time.sleep(0.5)
    return last


def test_prometheus_counts_the_images_we_sent(oodgate, prometheus):
    pngs = [png for _, png in images("fashion_")]
    for count in SENT:
        files = [("files", (f"{i}.png", pngs[i % len(pngs)], "image/png")) for i in range(count)]
        response = httpx.post(f"http://{oodgate}/score", files=files, timeout=60)
        assert response.status_code == 200
    assert wait_for_value(prometheus, 'up{job="oodgate"}', 1.0) == 1.0
    total = wait_for_value(prometheus, 'sum(oodgate_images_total{job="oodgate"})', float(sum(SENT)))
    assert total == sum(SENT)
    requests = wait_for_value(
        prometheus, 'sum(oodgate_requests_total{job="oodgate", endpoint="/score", code="200"})', float(len(SENT))
    )
    assert requests == len(SENT)
    # the drift window saw the same images (the tiny model is uncalibrated: no p-values, but bpd)
    window = wait_for_value(prometheus, 'oodgate_drift_window_images{job="oodgate", model="tiny"}', float(sum(SENT)))
    assert window == sum(SENT)
    # the alert rules loaded and evaluate (healthy: none firing)
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {"OodgateOODRateHigh", "OodgateDriftDetected"}
    assert query(prometheus, 'ALERTS{alertstate="firing"}') == []
