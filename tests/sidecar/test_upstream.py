"""service/upstream.py: what reaches the upstream and what comes back, against real upstreams on loopback.

The echo upstream answers with exactly what it received (method, raw path, query,
headers, body) so each property of forwarding is a value assertion: what reaches
the upstream, what comes back, what is dropped; a sized and a streamed upstream
check the cap on the answer (``max_upstream_response_bytes``).
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from service.app import create_app
from tests.sidecar.servers import LiveServer, free_port, headers_of, raw_http, sidecar_settings

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
        settings = sidecar_settings(
            tiny_models_root, upstream.url, sidecar_policy="shadow", max_upstream_response_bytes=CAP
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


def test_method_raw_path_query_and_body_reach_the_upstream(client):
    body = b'{"anything": [1, 2, 3]}'
    headers = {"content-type": "text/x-json"}
    response = client.request("PATCH", "/a%20b/c;x?q=1&q=2&s=%2F", content=body, headers=headers)
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["method"] == "PATCH"
    assert echoed["raw_path"] == "/a%20b/c;x"
    assert echoed["query"] == "q=1&q=2&s=%2F"
    assert base64.b64decode(echoed["body_b64"]) == body
    assert "x-ood" not in response.headers  # no image in a text body: forwarded unscored


def test_end_to_end_headers_pass_hop_by_hop_do_not(client):
    sent = [
        ("authorization", "Bearer t0ken"),
        ("x-request-id", "r-1"),
        ("accept", "application/json"),
        ("x-multi", "one"),
        ("x-multi", "two"),
        ("connection", "x-private"),
        ("x-private", "hop-only"),
        ("keep-alive", "timeout=9"),
        ("te", "trailers"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("x-ood", "false"),  # a client must not be able to pre-answer oodgate's verdict
        ("x-ood-p-value", "0.99"),
    ]
    response = client.get("/whatever", headers=sent)
    got = headers_of(response.json())
    assert got["authorization"] == ["Bearer t0ken"]
    assert got["x-request-id"] == ["r-1"]
    assert got["accept"] == ["application/json"]
    assert got["x-multi"] == ["one", "two"]
    for dropped in ("connection", "x-private", "keep-alive", "te", "proxy-authorization", "x-ood", "x-ood-p-value"):
        assert dropped not in got, dropped
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    # the pooled client adds no headers of its own
    assert "user-agent" in got and got["user-agent"][0].startswith("python-httpx")  # the test client's own
    # response side: upstream's end-to-end header passes, hop-by-hop ones (and those Connection names) do not
    assert response.headers["x-upstream"] == "echo"
    assert "keep-alive" not in response.headers and "x-secret" not in response.headers


def test_no_default_headers_are_added(gate):
    """A raw request with only Host: the upstream sees no Accept-Encoding or User-Agent invented by the proxy."""
    _, body = raw_http(gate.port, b"GET /bare HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n\r\n")
    echoed = json.loads(body)
    assert sorted(headers_of(echoed)) == ["host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]


def test_status_body_and_encoding_pass_through_untouched(client, upstream):
    via_gate = client.get("/teapot")
    direct = httpx.get(f"{upstream.url}/teapot")
    assert via_gate.status_code == direct.status_code == 418
    assert via_gate.headers["content-encoding"] == "gzip"
    assert via_gate.content == direct.content == b"short and stout"  # httpx decodes the identical gzip bytes
    assert via_gate.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_cookies_are_never_replayed_to_the_next_caller(client):
    client.get("/teapot")  # upstream sets cookies a and b
    with httpx.Client(base_url=client.base_url) as stranger:
        got = headers_of(stranger.get("/who").json())
    assert "cookie" not in got


def test_upstream_timeout_is_504_and_says_so(client):
    response = client.get("/slow")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_unreachable_upstream_is_502(calibrated_tiny):
    port = free_port()  # nothing listens here
    settings = sidecar_settings(calibrated_tiny, f"http://127.0.0.1:{port}", sidecar_passthrough_paths="/predict")
    server = LiveServer(create_app(settings)).start()
    try:
        response = httpx.get(f"{server.url}/predict", timeout=30)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_unreachable"
        assert str(port) in response.json()["error"]["message"]
    finally:
        server.stop()
