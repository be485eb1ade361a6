"""Which model gates the upstream when several are served: named, defaulted, or the server does not start."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from service import cli
from service.app import create_app
from service.settings import Settings
from tests.conftest import RGB8
from tests.service.serving import png, random_images
from tests.sidecar.servers import LiveServer


def sidecar_settings(root, upstream: str = "http://127.0.0.1:9", **overrides) -> Settings:
    base = {"models_root": root, "runtime": "onnx", "log_level": "warning", "upstream": upstream}
    return Settings(**{**base, "sidecar_policy": "annotate", **overrides})


def test_several_models_and_none_named_refuses_to_start(mixed_models_root, capsys):
    with pytest.raises(ValueError) as refused:
        create_app(sidecar_settings(mixed_models_root))
    message = str(refused.value)
    assert "OODGATE_SIDECAR_MODEL" in message and "gray8/1" in message and "rgb8/1" in message
    with pytest.raises(ValueError, match="not loaded"):
        create_app(sidecar_settings(mixed_models_root, sidecar_model="rgb8/9"))
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
        app = create_app(sidecar_settings(mixed_models_root, upstream=upstream.url, **named))
        with LiveServer(app) as sidecar, httpx.Client(base_url=sidecar.url, timeout=30) as client:
            image = random_images(1, seed=9, shape=RGB8)[0]
            response = client.post("/predict", files=[("file", ("x.png", png(image), "image/png"))])
            assert response.status_code == 200 and response.content == b"upstream answer"
            # uncalibrated tiny bundle: scored by rgb8, no flag made up
            assert response.headers["x-ood-model"] == "rgb8/1" and response.headers["x-ood"] == "unknown"
            # the API keeps its own default rule: several models, no bundled default -> model_required
            score = client.post("/score", files=[("files", ("x.png", png(image), "image/png"))])
            expected = 200 if "default_model" in named else 400
            assert score.status_code == expected, score.text
    finally:
        upstream.stop()
