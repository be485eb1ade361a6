"""The OpenAPI document: FastAPI's, completed with what it cannot see, so fuzzers and client generators can use it.

The endpoints read their bodies themselves (for speed and for the three body
types of ``POST /score``), so FastAPI infers no request body and only a 200.
This module adds, for every operation: the request bodies (multipart, JSON,
``.npy`` and raw images for ``/score``; the Open Inference Protocol's JSON and
its binary extension for ``infer``), the success schema, and every error status
the operation can answer with, in the form it answers (DESIGN.md's
``{"error": {"code", "message", "index"}}``, or ``{"error": "..."}`` under
``/v2``); with authentication on, the bearer scheme and a 401 on every covered
operation. The schemathesis test (tests/service/test_openapi.py) runs the
server against this document, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import base64
import copy
import io

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from PIL import Image

from ..errors import ServiceError
from ..params import json_properties, query_parameters
from ..settings import Settings
from .auth import ADMIN_PREFIX, OPEN_PATHS, auth_enabled
from .rest import SCORE_ROUTE

ERROR_TEXT = {
    400: "Malformed request: the body, a part, a field or a value does not parse (the message names it).",
    401: "No bearer token, or not a valid one (authentication is on; /admin: the admin token).",
    403: "Admin endpoints are off (no OODGATE_ADMIN_TOKEN).",
    404: "Unknown model or version, or no such path.",
    405: "Method not allowed on this path.",
    409: "The model has nothing to act on (e.g. no drift test without calibration).",
    413: "Too large: body bytes, images per request, or an image's declared pixels (decompression bomb).",
    415: "Unsupported Content-Type, Content-Encoding or image format.",
    422: "Well-formed but unusable: wrong image size or channels, values out of range, bad parameter.",
    500: "An image failed inference even alone, or an internal error (never the client's input); logged.",
    503: "Not ready, draining, or the queue is full: retry after Retry-After seconds.",
    504: "The request's deadline (timeout_ms, or the server's) passed before its images ran.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}

NULLABLE_NUMBER = {"type": ["number", "null"]}
SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "Stable, machine-readable cause."},
                    "message": {"type": "string"},
                    "index": {"type": ["integer", "null"], "description": "The image at fault, if one is."},
                },
            }
        },
    },
    "V2Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "'[code] message' (the protocol's form)."}},
    },
    "ScoreImages": {
        "type": "object",
        "required": ["images"],
        "properties": {
            "images": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["b64"],
                    "properties": {"b64": {"type": "string", "contentEncoding": "base64"}},
                },
            }
        },
    },
    "ScoreResult": {
        "type": "object",
        "properties": {
            "log_pz": NULLABLE_NUMBER,
            "log_det": NULLABLE_NUMBER,
            "log_px": NULLABLE_NUMBER,
            "bpd": NULLABLE_NUMBER,
            "log_pz_levels": {"type": "array", "items": NULLABLE_NUMBER},
            "log_det_levels": {"type": "array", "items": NULLABLE_NUMBER},
            "scores": {"type": "object", "additionalProperties": NULLABLE_NUMBER},
            "score": {"type": "string"},
            "p_value": NULLABLE_NUMBER,
            "ood": {"type": ["boolean", "null"]},
            "error": {"type": "object"},
        },
    },
    "ScoreResponse": {
        "type": "object",
        "required": ["model", "version", "alpha", "score", "results"],
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "string"},
            "alpha": {"type": "number"},
            "score": {"type": "string"},
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/ScoreResult"}},
            "error": {"type": "object"},
        },
    },
    "InferInputTensor": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {
                "type": "string",
                "enum": ["UINT8", "UINT16", "UINT32", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64", "BYTES"],
            },
            "shape": {"type": "array", "maxItems": 8, "items": {"type": "integer", "minimum": 0}},
            "data": {"type": "array", "description": "Pixels (row-major, may be nested) or base64 strings (BYTES)."},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {**json_properties(), "binary_data_output": {"type": "boolean"}},
            },
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {"$ref": "#/components/schemas/InferInputTensor"},
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                    },
                },
            },
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"type": "string"},
                        "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "data": {"type": "array"},
                        "parameters": {"type": "object"},
                    },
                },
            },
        },
    },
    "Readiness": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
}
BINARY = {"schema": {"type": "string", "format": "binary"}}

SCORE_BODY = {
    "required": True,
    "description": "One or more encoded images (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM), or a uint8 .npy "
    "[N,H,W] / [N,H,W,C].",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}
                },
            }
        },
        "application/json": {"schema": {"$ref": "#/components/schemas/ScoreImages"}},
        "application/x-npy": BINARY,
        "image/png": BINARY,
        "image/jpeg": BINARY,
    },
}
INFER_BODY = {
    "required": True,
    "description": "An Open Inference Protocol request; with Inference-Header-Content-Length, the JSON is "
    "followed by the binary tensor data (Triton's binary_tensor_data extension).",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
        "application/octet-stream": BINARY,
    },
}
INFER_HEADER = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "Bytes of JSON at the start of a binary-extension body.",
    "schema": {"type": "integer", "minimum": 1},
}

# statuses each kind of operation answers with, besides success and 401
SCORING_ERRORS = (400, 404, 413, 415, 422, 500, 503, 504)
LOOKUP_ERRORS = (404, 500)
PLAIN_ERRORS = (500,)
ADMIN_ERRORS = (400, 401, 403, 404, 409, 422, 500)  # 400 model_required; 401/403 from the admin token


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def error_response(status: int, v2: bool) -> dict:
    response = {"description": ERROR_TEXT[status], "content": json_content(ref("V2Error" if v2 else "Error"))}
    if status == 503:
        response["headers"] = RETRY_AFTER
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def describe(path: str, method: str, operation: dict, protected: bool) -> None:
    """Complete one operation in place: body, success schema, every error status."""
    v2 = path == "/v2" or path.startswith("/v2/")
    responses = {code: r for code, r in operation.get("responses", {}).items() if code.startswith("2")}
    errors: tuple[int, ...]
    if path == "/score" and method == "post":
        operation["requestBody"] = SCORE_BODY
        responses["200"] = {
            "description": "Per-image statistics, scores, p-values and flags.",
            "content": json_content(ref("ScoreResponse")),
        }
        errors = SCORING_ERRORS
    elif path.endswith("/infer") and method == "post":
        operation["requestBody"] = INFER_BODY
        operation.setdefault("parameters", []).append(INFER_HEADER)
        responses["200"] = {
            "description": "The outputs (binary ones after the JSON, as Inference-Header-Content-Length says).",
            "content": {**json_content(ref("InferResponse")), "application/octet-stream": BINARY},
        }
        errors = SCORING_ERRORS
    elif path.endswith("/ready"):
        responses["200"] = {"description": "Ready.", "content": json_content(ref("Readiness"))}
        responses["503"] = {
            "description": "Not ready (loading, warming up or draining).",
            "content": json_content(ref("Readiness")),
        }
        errors = LOOKUP_ERRORS if "{name}" in path else PLAIN_ERRORS
    elif path.startswith(ADMIN_PREFIX):
        errors = ADMIN_ERRORS
    elif path.startswith("/v2/repository/models/") and path.endswith(("/load", "/unload")):
        responses["200"] = {"description": "Done: the model's versions serve (load) or stopped (unload). No body."}
        errors = SCORING_ERRORS
    elif method in ("post", "put", "patch", "delete"):
        errors = SCORING_ERRORS  # an operation added later: document the full set rather than too little
    elif "{name}" in path:
        errors = LOOKUP_ERRORS
    else:
        errors = PLAIN_ERRORS
    for status in (*errors, *((401,) if protected else ())):
        responses.setdefault(str(status), error_response(status, v2))
    operation["responses"] = responses
    if path.startswith(ADMIN_PREFIX):
        operation["security"] = [{"bearer": []}]  # the admin token
    elif not protected:
        operation["security"] = []


def metrics_operation(protected: bool) -> dict:
    operation = {
        "summary": "Prometheus metrics",
        "operationId": "metrics",
        "responses": {
            "200": {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    }
    describe("/metrics", "get", operation, protected)
    return operation


def served_examples(app: FastAPI) -> dict[str, object]:
    """Requests that work against the default model: a blank image of its size, as a client would send it.

    Documentation for people, and the explicit examples a fuzzer sends first, so the success
    schemas are checked against real answers too. None when no model is the default.
    """
    try:
        entry = app.state.dataplane.repository.get(None)
    except ServiceError:
        return {}
    spec = entry.manifest.input
    _, height, width = spec.shape
    buffer = io.BytesIO()
    Image.new(spec.color_mode, (width, height)).save(buffer, format="PNG")
    blank = base64.b64encode(buffer.getvalue()).decode()
    return {
        "name": entry.name,
        "model": entry.name,
        "version": entry.version,
        "score": entry.detector.default_score,
        "score_json": {"images": [{"b64": blank}]},
        "infer": {"inputs": [{"name": spec.name, "datatype": "BYTES", "shape": [1], "data": [blank]}]},
    }


def add_examples(document: dict, examples: dict[str, object]) -> None:
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in ("name", "model", "version", "score") and parameter.get("in") in (
                    "path",
                    "query",
                ):
                    parameter["example"] = examples[parameter["name"]]
            body = {"/score": examples["score_json"]}.get(path, examples["infer"] if path.endswith("/infer") else None)
            if body is not None and "requestBody" in operation:
                request_body = copy.deepcopy(operation["requestBody"])  # the shared templates stay as they are
                request_body["content"]["application/json"]["example"] = body
                operation["requestBody"] = request_body


def score_operation() -> dict:
    """``POST /score``'s operation, as FastAPI would infer it from a route with these query parameters.

    ``/score`` is a plain Starlette route (``service/api/rest.py`` says why), which
    FastAPI's generator skips; its parameters come from the table they are parsed with.
    """
    return {
        "summary": "Score",
        "description": SCORE_ROUTE.endpoint.__doc__,
        "operationId": "score_score_post",
        "parameters": query_parameters(),
        "responses": {},
    }


def build(app: FastAPI, settings: Settings) -> dict:
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
    )
    if SCORE_ROUTE in app.routes:  # after GET /models, where FastAPI would have put it
        paths = document.setdefault("paths", {})
        models = {path: paths.pop(path) for path in ["/models"] if path in paths}
        document["paths"] = {**models, SCORE_ROUTE.path: {"post": score_operation()}, **paths}
    auth = auth_enabled(settings)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            describe(path, method, operation, protected=auth and path not in OPEN_PATHS)
    document["paths"]["/metrics"] = {"get": metrics_operation(protected=auth and settings.metrics_auth)}
    examples = served_examples(app)
    if examples:
        add_examples(document, examples)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's; our 422s are Error / V2Error
        schemas.pop(unused, None)
    schemas.update(SCHEMAS)
    document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    if auth:
        document["security"] = [{"bearer": []}]
    return document


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the completed document at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, settings)
        return app.openapi_schema

    app.openapi = openapi
