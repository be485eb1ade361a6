"""The one error type the data plane raises; the API layers turn it into HTTP answers.

Each error carries what DESIGN.md's contract needs: an HTTP status, a stable
machine-readable ``code``, a human ``message`` and, when one image is to blame,
its ``index`` in the request. Status meanings: 400 malformed, 404 unknown
model, 401 no or a wrong bearer token, 413 too large, 415 unsupported type, 422 valid but unusable, 500 an
image failed inference even alone, 503 queue full / draining / not ready (with
``Retry-After``), 504 past the deadline.
"""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        index: int | None = None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.index = index
        self.headers = headers or {}
        self.reason = reason or REASONS.get(status, "error")

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "index": self.index}}


# status -> the rejection reason counted in ``oodgate_rejections_total`` (503s set their own)
REASONS = {
    400: "bad_request",
    401: "unauthorized",
    404: "unknown_model",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    503: "not_ready",
    504: "deadline",
}


def bad_request(code: str, message: str, index: int | None = None) -> ServiceError:
    return ServiceError(400, code, message, index)


def too_large(code: str, message: str, index: int | None = None) -> ServiceError:
    return ServiceError(413, code, message, index)


def unprocessable(code: str, message: str, index: int | None = None) -> ServiceError:
    return ServiceError(422, code, message, index)
