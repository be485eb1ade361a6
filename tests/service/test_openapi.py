"""The live OpenAPI document, fuzzed by schemathesis against a real server on loopback.

Every operation the document lists gets generated requests, schema-conforming
(positive) and not (negative); each answer must be a status the document lists for
that operation, with the documented content type and body schema, and never a 5xx.
One exception is checked, not waved through: a 504 ``deadline_exceeded`` for a request
that set its own ``timeout_ms`` and got the answer after that much time (the client's
deadline, honoured). Each operation runs twice per mode: with everything generated, and
with the served model's name fixed so requests get past the 404. The run is sized for CI
(``OODGATE_FUZZ_EXAMPLES`` per operation, mode and run, default 10); ``scripts/fuzz_api.py``
runs it longer and writes the figures of docs/reliability.md (``OODGATE_FUZZ_REPORT``).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

try:
    import schemathesis
except ImportError:  # a test extra (pyproject.toml): skipped on a developer's machine, a failure under CI
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("schemathesis is not installed (pip install -e '.[test]')", allow_module_level=True)
from hypothesis import HealthCheck, Phase, given  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app  # noqa: E402
from tests.service.serving import LiveServer, calibrated_root, settings  # noqa: E402

TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = int(os.environ.get("OODGATE_FUZZ_EXAMPLES", "10"))
REPORT = os.environ.get("OODGATE_FUZZ_REPORT")
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]

tally: Counter = Counter()
deadline_504s: list[dict] = []


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_models_root):
    root = calibrated_root(tmp_path_factory.mktemp("calibrated"), tiny_models_root)
    app = create_app(
        settings(root, api_tokens=TOKEN, admin_token=TOKEN, max_request_bytes=1 << 20, max_images_per_request=16)
    )
    with LiveServer(app) as server:
        yield server
    if REPORT:
        summary = {
            "examples_per_operation": EXAMPLES,
            "requests": sum(v for k, v in tally.items() if k.startswith("status:")),
            "by_status": {k.split(":")[1]: v for k, v in sorted(tally.items()) if k.startswith("status:")},
            "by_operation": {k.split(":", 1)[1]: v for k, v in sorted(tally.items()) if k.startswith("op:")},
            "by_operation_and_status": {
                k.split(":", 1)[1]: v for k, v in sorted(tally.items()) if k.startswith("opstatus:")
            },
            "by_mode": {k.split(":", 1)[1]: v for k, v in sorted(tally.items()) if k.startswith("mode:")},
            "status_5xx": sum(v for k, v in tally.items() if k.startswith("status:5")),
            "deadline_504s_honoured": len(deadline_504s),  # the request's own timeout_ms had passed
            "deadline_504s": deadline_504s,
        }
        Path(REPORT).write_text(json.dumps(summary, indent=2) + "\n")


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json", headers=AUTH)


def requested_timeout_ms(case) -> float | None:
    """The deadline the request itself asked for (query or v2 parameters), if a valid one."""
    timeout = None
    if case.query and "timeout_ms" in case.query:
        timeout = case.query["timeout_ms"]
    elif isinstance(case.body, dict) and isinstance(case.body.get("parameters"), dict):
        timeout = case.body["parameters"].get("timeout_ms")
    try:
        return float(timeout) if timeout is not None and float(timeout) > 0 else None
    except (TypeError, ValueError):
        return None


def anchored(operation) -> dict:
    """Fix the model to the served one, so the generated bodies and parameters reach the scoring code.

    Free runs mostly meet 404 (a random model name) or, with negative data, 401 (a negated token);
    anchored runs carry the valid token and the real model and get past both.
    """
    names = {p.name for p in operation.path_parameters}
    anchors = {}
    path = {k: v for k, v in {"name": "tiny", "version": "1"}.items() if k in names}
    if path:
        anchors["path_parameters"] = path
    if operation.path == "/score":
        anchors["query"] = {"model": "tiny", "version": "1"}
    return anchors


def check_case(case, force_auth: bool) -> None:
    if force_auth:  # negative data would otherwise mostly negate the token and stop at the 401
        case.headers = {**(case.headers or {}), **AUTH}
    began = time.monotonic()
    response = case.call(headers=AUTH, timeout=60)
    elapsed_ms = (time.monotonic() - began) * 1000
    tally[f"status:{response.status_code}"] += 1
    tally[f"mode:{case.meta.generation.mode.value if case.meta else '?'}:{response.status_code}"] += 1
    tally[f"op:{case.operation.label}"] += 1
    tally[f"opstatus:{case.operation.label}:{response.status_code}"] += 1
    case.validate_response(response, checks=CHECKS)
    timeout_ms = requested_timeout_ms(case)
    if response.status_code == 504 and timeout_ms is not None and timeout_ms <= elapsed_ms:
        deadline_504s.append({"operation": case.operation.label, "timeout_ms": timeout_ms, "elapsed_ms": elapsed_ms})
        return
    assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:300])


def fuzzer(strategy, force_auth: bool):
    """One Hypothesis test over ``strategy``'s cases (a factory, so each keeps its own arguments)."""

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        check_case(case, force_auth)

    return run


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_no_5xx_and_no_undocumented_status(api_schema, mode):
    """Every operation, EXAMPLES generated requests each (schemathesis's pytest plugin does not load on pytest 9)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 14  # /score, /models, /metrics and the eleven /v2 operations
    failures = []
    for operation, anchors in [(op, anchors) for op in operations for anchors in (False, True)]:
        strategy = operation.as_strategy(generation_mode=mode, **(anchored(operation) if anchors else {}))
        run = fuzzer(strategy, force_auth=anchors)
        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # an operation with no inputs has no negative data
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures.append(f"{operation.label} (anchored: {anchors}): {exc}"[:2000])
    assert not failures, "\n\n".join(failures)


def test_the_document_describes_every_body_and_error(tiny_models_root):
    """Without a server: the bodies FastAPI cannot see and the statuses each operation answers with."""
    document = create_app(settings(tiny_models_root, api_tokens=TOKEN)).openapi()
    score = document["paths"]["/score"]["post"]
    assert set(score["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/json",
        "application/x-npy",
        "image/png",
        "image/jpeg",
    }
    assert {"400", "401", "404", "413", "415", "422", "500", "503", "504"} <= set(score["responses"])
    assert score["responses"]["503"]["headers"]["Retry-After"]
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert infer["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/V2Error"
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "500" in operation["responses"], (method, path)
            open_path = path in ("/v2/health/live", "/v2/health/ready", "/metrics")
            assert ("401" in operation["responses"]) is not open_path, (method, path)
            assert (operation.get("security") == []) is open_path, (method, path)
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert "HTTPValidationError" not in document["components"]["schemas"]
