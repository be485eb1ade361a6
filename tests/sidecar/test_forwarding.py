"""How the sidecar forwards, checked against an echo upstream on loopback.

The upstream answers with exactly what it received (method, raw path, query, headers,
body) so each property of the proxy is a value assertion: what reaches the upstream,
what comes back, what is dropped. Policy here is ``annotate`` with a tiny calibrated
flow, so every scored request also carries oodgate's headers both ways.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.app import create_app
from service.settings import Settings
from tests.sidecar.servers import LiveServer, free_port, images, raw_http


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "raw_path": request.scope["raw_path"].decode(),
            "query": request.scope["query_string"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in request.headers.raw],
            "body_b64": base64.b64encode(body).decode(),
        },
        headers={"x-upstream": "echo", "keep-alive": "timeout=5", "connection": "x-secret", "x-secret": "hop"},
    )


async def teapot(request: Request) -> Response:
    response = Response(gzip.compress(b"short and stout"), status_code=418, media_type="text/plain")
    response.headers["content-encoding"] = "gzip"
    response.raw_headers.append((b"set-cookie", b"a=1; Path=/"))
    response.raw_headers.append((b"set-cookie", b"b=2; Path=/"))
    return response


async def slow(request: Request) -> Response:
    await asyncio.sleep(3)
    return Response(b"too late")


def echo_app() -> Starlette:
    routes = [
        Route("/teapot", teapot, methods=["GET", "POST"]),
        Route("/slow", slow, methods=["GET", "POST"]),
        Route("/health", lambda r: Response(b"ok")),
        Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    return Starlette(routes=routes)


@pytest.fixture(scope="module")
def upstream():
    server = LiveServer(echo_app()).start(health="/health")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gate(upstream, calibrated_tiny):
    settings = Settings(
        models_root=calibrated_tiny,
        runtime="onnx",
        log_level="warning",
        decode_threads=1,
        max_batch_size=4,
        upstream=upstream.url,
        sidecar_policy="annotate",
        upstream_timeout_s=1.0,
    )
    server = LiveServer(create_app(settings)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gate):
    with httpx.Client(base_url=gate.url, timeout=30) as c:
        yield c


def headers_of(echoed: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in echoed["headers"]:
        out.setdefault(key.lower(), []).append(value)
    return out


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


def test_annotate_adds_the_verdict_both_ways(client):
    name, png = images("fashion_")[0]
    direct = client.post("/score", files={"files": (name, png, "image/png")}).json()["results"][0]
    response = client.post("/classify", content=png, headers={"content-type": "image/png"})
    assert response.status_code == 200
    expected = {"x-ood": str(direct["ood"]).lower(), "x-ood-p-value": f"{direct['p_value']:.6g}"}
    got = headers_of(response.json())
    assert {k: got[k][0] for k in expected} == expected  # on the forwarded request
    assert {k: response.headers[k] for k in expected} == expected  # and on the response
    assert response.headers["x-ood-model"] == "tiny/1"
    assert response.headers["x-ood-score"] == direct["score"]
    assert base64.b64decode(response.json()["body_b64"]) == png


def test_json_base64_images_are_found_at_the_configured_path(client):
    name, png = images("mnist_")[0]
    direct = client.post("/score", files={"files": (name, png, "image/png")}).json()["results"][0]
    payload = {"image": "data:image/png;base64," + base64.b64encode(png).decode(), "note": "kept"}
    response = client.post("/predict", json=payload)
    assert response.headers["x-ood-p-value"] == f"{direct['p_value']:.6g}"
    assert json.loads(base64.b64decode(response.json()["body_b64"])) == payload


def test_multipart_scores_every_image_part(client):
    files = [("file", (n, b, "image/png")) for n, b in images("fashion_")[:2] + images("mnist_")[:1]]
    files.append(("meta", ("meta.json", b'{"k": 1}', "application/json")))  # not an image part: ignored
    scored = client.post("/score", files=[("files", f[1]) for f in files[:3]]).json()["results"]
    response = client.post("/predict", files=files, data={"field": "value"})
    assert response.headers["x-ood-p-value"] == f"{min(r['p_value'] for r in scored):.6g}"
    assert response.headers["x-ood"] == str(any(r["ood"] for r in scored)).lower()


def test_upstream_timeout_is_504_and_says_so(client):
    response = client.get("/slow")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_own_endpoints_are_not_proxied(client):
    assert client.get("/metrics").status_code == 200
    response = client.post("/metrics")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_paths_outside_the_proxied_set_get_404(upstream, calibrated_tiny):
    settings = Settings(
        models_root=calibrated_tiny,
        runtime="onnx",
        log_level="warning",
        upstream=upstream.url,
        sidecar_paths="/predict,/v1/*",
        sidecar_passthrough_paths="/v1/*",
    )
    server = LiveServer(create_app(settings)).start()
    try:
        response = httpx.get(f"{server.url}/elsewhere", timeout=30)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_proxied"
        assert httpx.get(f"{server.url}/v1/models/x", timeout=30).json()["raw_path"] == "/v1/models/x"
    finally:
        server.stop()


def test_unreachable_upstream_is_502(calibrated_tiny):
    port = free_port()  # nothing listens here
    settings = Settings(
        models_root=calibrated_tiny,
        runtime="onnx",
        log_level="warning",
        upstream=f"http://127.0.0.1:{port}",
        sidecar_passthrough_paths="/predict",
    )
    server = LiveServer(create_app(settings)).start()
    try:
        response = httpx.get(f"{server.url}/predict", timeout=30)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_unreachable"
        assert str(port) in response.json()["error"]["message"]
    finally:
        server.stop()


def test_a_body_is_searched_on_the_loop_only_below_the_byte_budget(gate, client):
    """settings.sidecar_inline_search_bytes decides where a body is searched; the verdict is the same either way."""
    proxy = gate.app.state.sidecar
    plane = proxy.plane
    blocking, calls = plane.blocking, []

    async def counted(fn, *args, **kwargs):
        calls.append(fn.__name__)
        return await blocking(fn, *args, **kwargs)

    _, png = images("fashion_")[0]
    budget = proxy.settings.sidecar_inline_search_bytes
    verdicts = []
    plane.blocking = counted
    try:
        for limit, trips in ((len(png), 0), (len(png) - 1, 1)):
            proxy.settings.sidecar_inline_search_bytes = limit
            calls.clear()
            response = client.post("/predict", content=png, headers={"content-type": "image/png"})
            assert response.status_code == 200
            assert calls.count("images") == trips
            verdicts.append((response.headers["x-ood"], response.headers["x-ood-p-value"]))
    finally:
        plane.blocking = blocking
        proxy.settings.sidecar_inline_search_bytes = budget
    assert verdicts[0] == verdicts[1]
