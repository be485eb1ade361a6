"""The sidecar (service/sidecar.py): which model gates the upstream, and what it does with a request.

Which model: named, defaulted, or the server does not start. What it does, against an
echo upstream that answers with exactly what it received, so each property is a value
assertion: which images are found and scored, which verdict headers travel both ways,
which paths are proxied at all. Policy here is ``annotate`` with a tiny calibrated
flow. How the request travels and the answer comes back is
``tests/sidecar/test_upstream.py``'s; the security property (block mode fails closed)
is ``test_fail_closed.py``'s and the end-to-end gate before the demo classifier
``test_classifier_gate.py``'s.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from service import cli
from service.app import create_app
from tests.conftest import RGB8
from tests.service.serving import png as png_file
from tests.service.serving import random_images
from tests.sidecar.servers import LiveServer, headers_of, images, sidecar_settings


def annotating(root, upstream: str = "http://127.0.0.1:9", **overrides):
    """A sidecar in ``annotate`` mode (the tests below read the verdict, never a block)."""
    return sidecar_settings(root, upstream, **{"sidecar_policy": "annotate", **overrides})


def test_several_models_and_none_named_refuses_to_start(mixed_models_root, capsys):
    with pytest.raises(ValueError) as refused:
        create_app(annotating(mixed_models_root))
    message = str(refused.value)
    assert "OODGATE_SIDECAR_MODEL" in message and "gray8/1" in message and "rgb8/1" in message
    with pytest.raises(ValueError, match="not loaded"):
        create_app(annotating(mixed_models_root, sidecar_model="rgb8/9"))
    # the CLI says so in one line and exits 2, no traceback
    assert cli.main(["--models-root", str(mixed_models_root), "--upstream", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("oodgate-serve: sidecar mode with several models") and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("named", [{"sidecar_model": "rgb8"}, {"default_model": "rgb8/1"}])
def test_the_named_model_scores_the_proxied_requests(mixed_models_root, named):
    routes = [
        Route("/predict", lambda r: Response(b"upstream answer"), methods=["POST"]),
        Route("/health", lambda r: Response(b"ok")),
    ]
    upstream = LiveServer(Starlette(routes=routes)).start(health="/health", timeout=30)
    try:
        app = create_app(annotating(mixed_models_root, upstream=upstream.url, **named))
        with LiveServer(app) as sidecar, httpx.Client(base_url=sidecar.url, timeout=30) as client:
            image = random_images(1, seed=9, shape=RGB8)[0]
            response = client.post("/predict", files=[("file", ("x.png", png_file(image), "image/png"))])
            assert response.status_code == 200 and response.content == b"upstream answer"
            # uncalibrated tiny bundle: scored by rgb8, no flag made up
            assert response.headers["x-ood-model"] == "rgb8/1" and response.headers["x-ood"] == "unknown"
            # the API keeps its own default rule: several models, no bundled default -> model_required
            score = client.post("/score", files=[("files", ("x.png", png_file(image), "image/png"))])
            expected = 200 if "default_model" in named else 400
            assert score.status_code == expected, score.text
    finally:
        upstream.stop()


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


def test_own_endpoints_are_not_proxied(client):
    assert client.get("/metrics").status_code == 200
    response = client.post("/metrics")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_paths_outside_the_proxied_set_get_404(upstream, calibrated_tiny):
    settings = sidecar_settings(
        calibrated_tiny, upstream.url, sidecar_paths="/predict,/v1/*", sidecar_passthrough_paths="/v1/*"
    )
    server = LiveServer(create_app(settings)).start()
    try:
        response = httpx.get(f"{server.url}/elsewhere", timeout=30)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_proxied"
        assert httpx.get(f"{server.url}/v1/models/x", timeout=30).json()["raw_path"] == "/v1/models/x"
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
