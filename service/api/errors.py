"""Error answers: DESIGN.md's ``{"error": {"code", "message", "index"}}``; the V2 protocol's own form under ``/v2``.

The Open Inference Protocol defines its error body as ``{"error": "<message>"}``
and existing Triton/KServe clients parse exactly that, so ``/v2`` routes answer
in that form (with the code and index folded into the message); every other
route answers in DESIGN.md's form. Either way the status code is the same and
each refusal is counted once in ``oodgate_rejections_total``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import REASONS, ServiceError
from ..request_context import context_of

log = logging.getLogger(__name__)


def is_v2(request: Request) -> bool:
    return request.url.path == "/v2" or request.url.path.startswith("/v2/")


def error_response(request: Request, error: ServiceError) -> JSONResponse:
    if is_v2(request):
        where = f" (image {error.index})" if error.index is not None else ""
        content = {"error": f"[{error.code}] {error.message}{where}"}
    else:
        content = error.body()
    return JSONResponse(content, status_code=error.status, headers=error.headers)


def count_rejection(request: Request, error: ServiceError) -> None:
    if error.status >= 500 and error.status not in (503, 504):
        return  # server-side failures are counted as image failures by the batcher
    metrics = request.app.state.metrics
    metrics.rejections.labels(*context_of(request).model, error.reason).inc()


async def service_error_handler(request: Request, error: ServiceError) -> JSONResponse:
    count_rejection(request, error)
    return error_response(request, error)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return await service_error_handler(request, ServiceError(422, "invalid_parameter", problems))


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    error = ServiceError(
        exc.status_code,
        code,
        str(exc.detail),
        headers=dict(exc.headers or {}),  # e.g. Allow on a 405
        reason=REASONS.get(exc.status_code, "bad_request"),
    )
    if exc.status_code in (404, 405):
        return error_response(request, error)  # a wrong URL is not a model refusal; do not count it
    return await service_error_handler(request, error)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not the client's doing: logged here in full, answered with no exception text (it can leak internals)."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    message = "internal error; the server logged the details"
    return error_response(request, ServiceError(500, "internal_error", message))


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
