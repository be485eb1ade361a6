"""Admin endpoints, behind a bearer token: ``POST /admin/drift/reset``.

The drift alarm (service/guarantees.py) latches: once an operator has looked at
the traffic that raised it, they clear it here, which also restarts the test on
the calibration set alone (the new run has its own false-alarm bound,
``drift_delta``). Each reset is counted in ``oodgate_drift_alarm_resets_total``.

The endpoints are off unless ``OODGATE_ADMIN_TOKEN`` is set (403), and a request
without that exact token gets 401: silencing an alarm is not something an
anonymous client may do, so the check fails closed.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request

from ..dataplane import DataPlane
from ..errors import ServiceError

router = APIRouter(prefix="/admin")


def authorize(request: Request) -> None:
    token = request.app.state.settings.admin_token
    if token is None:
        raise ServiceError(
            403, "admin_disabled", "admin endpoints are off: set OODGATE_ADMIN_TOKEN", reason="unauthorized"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise ServiceError(
            401,
            "unauthorized",
            "send Authorization: Bearer <OODGATE_ADMIN_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
            reason="unauthorized",
        )


@router.post("/drift/reset")
async def reset_drift(request: Request, model: str | None = None, version: str | None = None) -> dict:
    """Clear a model's latched drift alarm and restart its test martingale (default: the default model)."""
    authorize(request)
    plane: DataPlane = request.app.state.dataplane
    entry = plane.model(model, version)
    before = plane.drift.reset_alarm((entry.name, entry.version))
    if before is None:
        message = f"model {entry.name}/{entry.version} is not calibrated: it has no drift test"
        raise ServiceError(409, "no_drift_test", message, reason="unprocessable")
    return {
        "model": entry.name,
        "version": entry.version,
        "reset": True,
        "before": {"images": before.images, "log10_wealth": before.log10_wealth, "alarm": before.alarm},
    }
