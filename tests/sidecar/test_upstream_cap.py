"""The sidecar's cap on the upstream's answer (``max_upstream_response_bytes``, service/sidecar.py)."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from service.app import create_app
from service.settings import Settings
from tests.sidecar.servers import LiveServer

CAP = 100_000


async def sized(request):
    return Response(b"a" * int(request.path_params["size"]), media_type="application/octet-stream")


async def streamed(request):  # chunked, no Content-Length: only counting can catch it
    size = int(request.path_params["size"])

    async def chunks():
        for _ in range(size // 10_000):
            yield b"b" * 10_000

    return StreamingResponse(chunks(), media_type="application/octet-stream")


@pytest.fixture(scope="module")
def proxy(tiny_models_root):
    upstream_app = Starlette(routes=[Route("/sized/{size}", sized), Route("/streamed/{size}", streamed)])
    upstream = LiveServer(upstream_app).start(health="/sized/1", timeout=30)
    try:
        settings = Settings(
            models_root=tiny_models_root,
            runtime="onnx",
            log_level="warning",
            upstream=upstream.url,
            sidecar_policy="shadow",
            max_upstream_response_bytes=CAP,
        )
        with LiveServer(create_app(settings)) as live:
            yield live
    finally:
        upstream.stop()


@pytest.mark.parametrize("kind", ["sized", "streamed"])
def test_an_answer_past_the_cap_is_refused_with_502_and_one_under_it_is_relayed(proxy, kind):
    under = httpx.get(f"{proxy.url}/{kind}/{CAP - 10_000}")
    assert under.status_code == 200 and len(under.content) == CAP - 10_000
    over = httpx.get(f"{proxy.url}/{kind}/{CAP + 10_000}")
    assert over.status_code == 502 and over.json()["error"]["code"] == "upstream_too_large"
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'oodgate_sidecar_requests_total{outcome="upstream_too_large",policy="shadow"}' in metrics
