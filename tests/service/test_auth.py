"""service.api.auth: bearer tokens on a real server on loopback; probes open, everything else closed."""

from __future__ import annotations

import httpx
import pytest

from service.api import auth
from service.app import create_app
from tests.service.serving import LiveServer, npy, random_images, raw_http, settings

TOKEN = "env-token-0123456789"
FILE_TOKEN = "file-token-abcdefghij"

PROTECTED = [
    ("POST", "/score"),
    ("GET", "/models"),
    ("GET", "/v2"),
    ("GET", "/v2/models/tiny"),
    ("GET", "/v2/models/tiny/ready"),
    ("GET", "/v2/models/tiny/config"),
    ("POST", "/v2/models/tiny/infer"),
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("GET", "/openapi.json"),
]


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("secret") / "tokens"
    path.write_text(f"# rotated by the operator\n\n{FILE_TOKEN}\n")
    return path


@pytest.fixture(scope="module")
def server(tiny_models_root, tokens_file):
    app = create_app(settings(tiny_models_root, api_tokens=TOKEN, api_tokens_file=tokens_file))
    with LiveServer(app) as live:
        yield live


def bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def score(url: str, headers: dict) -> httpx.Response:
    body = npy(random_images(1)[:, 0])  # [N, H, W] uint8
    return httpx.post(f"{url}/score", content=body, headers={"content-type": "application/x-npy", **headers})


@pytest.mark.parametrize("method, path", PROTECTED)
def test_every_endpoint_but_the_probes_needs_a_token(server, method, path):
    response = httpx.request(method, f"{server.url}{path}", timeout=30)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="oodgate"'
    error = response.json()["error"]
    assert "unauthorized" in (error if isinstance(error, str) else error["code"])  # /v2 has its own error form
    wrong = httpx.request(method, f"{server.url}{path}", headers=bearer("not-" + TOKEN), timeout=30)
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == 'Bearer realm="oodgate", error="invalid_token"'
    right = httpx.request(method, f"{server.url}{path}", headers=bearer(TOKEN), timeout=30)
    assert right.status_code != 401


def test_a_valid_token_scores(server):
    for token in (TOKEN, FILE_TOKEN):
        response = score(server.url, bearer(token))
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 1
    assert score(server.url, {"authorization": f"Basic {TOKEN}"}).status_code == 401
    assert score(server.url, {"authorization": f"bearer {TOKEN}"}).status_code == 200  # the scheme is case-free


def test_health_probes_and_metrics_stay_open(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200, path
    text = httpx.get(f"{server.url}/metrics").text
    assert 'reason="unauthorized"' in text


@pytest.mark.parametrize(
    "path", ["/v2/health/live/../../models/tiny", "/v2/health/ready/%2e%2e/%2e%2e/models/tiny", "//models"]
)
def test_no_spelling_of_a_path_gets_past_without_a_token(server, path):
    status, body = raw_http(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status in (401, 404), body
    assert b'"name":"tiny"' not in body.replace(b" ", b"")


def test_metrics_auth_protects_metrics(tiny_models_root):
    app = create_app(settings(tiny_models_root, api_tokens=TOKEN, metrics_auth=True))
    with LiveServer(app) as live:
        assert httpx.get(f"{live.url}/metrics").status_code == 401
        assert httpx.get(f"{live.url}/metrics", headers=bearer(TOKEN)).status_code == 200
        assert httpx.get(f"{live.url}/v2/health/ready").status_code == 200


def test_the_tokens_file_is_reread_and_an_empty_one_refuses_all(tiny_models_root, tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "FILE_CHECK_INTERVAL_S", 0.0)
    path = tmp_path / "tokens"
    path.write_text("first-token-0000\n")
    with LiveServer(create_app(settings(tiny_models_root, api_tokens_file=path))) as live:
        assert score(live.url, bearer("first-token-0000")).status_code == 200
        path.write_text("second-token-1111-longer\n")
        assert score(live.url, bearer("first-token-0000")).status_code == 401
        assert score(live.url, bearer("second-token-1111-longer")).status_code == 200
        path.write_text("# every token revoked\n")
        assert score(live.url, bearer("second-token-1111-longer")).status_code == 401
        path.unlink()
        assert score(live.url, bearer("second-token-1111-longer")).status_code == 401


def test_a_missing_tokens_file_fails_at_start(tiny_models_root, tmp_path):
    with pytest.raises(OSError):
        create_app(settings(tiny_models_root, api_tokens_file=tmp_path / "absent"))


def test_without_tokens_nothing_changes(tiny_models_root):
    with LiveServer(create_app(settings(tiny_models_root))) as live:
        assert score(live.url, {}).status_code == 200
        assert httpx.get(f"{live.url}/openapi.json").status_code == 200


def test_sidecar_proxied_paths_are_the_upstreams_to_authenticate(tiny_models_root):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def upstream_answer(request):
        return PlainTextResponse(f"upstream saw {request.headers.get('authorization')}")

    upstream = Starlette(routes=[Route("/{path:path}", upstream_answer, methods=["GET", "POST"])])
    classifier = LiveServer(upstream).start(health="/health")
    overrides = {"api_tokens": TOKEN, "upstream": classifier.url, "sidecar_policy": "shadow"}
    try:
        with LiveServer(create_app(settings(tiny_models_root, **overrides))) as gate:
            proxied = httpx.get(f"{gate.url}/predict", headers={"authorization": "Bearer upstream-own"})
            assert proxied.status_code == 200 and proxied.text == "upstream saw Bearer upstream-own"
            assert score(gate.url, {}).status_code == 401
            status, body = raw_http(gate.port, b"GET //models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 400 and b"bad_path" in body  # an own route spelled oddly is neither proxied nor served
    finally:
        classifier.stop()


def test_admin_endpoints_take_their_own_token_not_an_api_token(tiny_models_root):
    admin = "admin-token-0123456789"
    app = create_app(settings(tiny_models_root, api_tokens=TOKEN, admin_token=admin))
    with LiveServer(app) as live:
        url = f"{live.url}/admin/drift/reset"
        assert httpx.post(url).status_code == 401
        assert httpx.post(url, headers=bearer(TOKEN)).status_code == 401  # an API token is not an admin token
        answer = httpx.post(url, headers=bearer(admin))
        assert answer.status_code == 409  # authorised; the tiny model has no calibration, so no drift test
        assert answer.json()["error"]["code"] == "no_drift_test"
        assert score(live.url, bearer(admin)).status_code == 401  # and an admin token scores nothing
