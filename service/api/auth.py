"""Bearer-token authentication: who may score, read the docs and call ``/v2``, decided before any route runs.

Off unless tokens are configured (``api_tokens`` and/or ``api_tokens_file``).
On, every request needs ``Authorization: Bearer <token>`` naming one of them,
except:

- the health probes (``/v2/health/live``, ``/v2/health/ready``): a kubelet or
  load balancer carries no token, and they tell nothing worth hiding;
- ``/metrics``, unless ``metrics_auth`` is on;
- in sidecar mode, requests the proxy serves: they are the upstream's, which
  authenticates them itself (their ``Authorization`` header is forwarded untouched);
- ``/admin/...``: those endpoints check their own, separate token
  (``OODGATE_ADMIN_TOKEN``, service/api/admin.py) and refuse everything without
  it, so one ``Authorization`` header carries the admin token there.

The open paths are matched exactly, so no spelling of a path reaches a route
without a token (a path with ``..`` or ``//`` matches no own route; the proxy
normalises it and refuses it if it names one).

Tokens are compared in constant time: the presented token and each configured
one are hashed to 32 bytes and compared with :func:`hmac.compare_digest`, every
configured token every time, so neither a token's length nor which one matched
shows in the timing. The file is re-read when it changes (checked at most once a
second), so a Kubernetes Secret can be rotated without a restart; an empty or
unreadable file refuses every request (fail closed) and logs why.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from pathlib import Path

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ServiceError
from ..settings import Settings
from .errors import count_rejection, error_response

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
METRICS_PATH = "/metrics"
ADMIN_PREFIX = "/admin/"  # authenticated by the admin router's own token
REALM = 'Bearer realm="oodgate"'
FILE_CHECK_INTERVAL_S = 1.0


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def read_tokens_file(path: Path) -> list[str]:
    """One token per line; blank lines and lines starting with ``#`` are skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


class TokenSet:
    """The accepted tokens (as digests): from the settings, plus the file, re-read when it changes."""

    def __init__(self, tokens: list[str], path: Path | None) -> None:
        self.fixed = [digest(t) for t in tokens]
        self.path = path
        self.from_file: list[bytes] = []
        self.file_stamp: tuple | None = None
        self.checked = -float("inf")
        if path is not None:
            read_tokens_file(path)  # unreadable at start-up: fail now, not on the first request
            self.refresh()

    def refresh(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self.checked < FILE_CHECK_INTERVAL_S:
            return
        self.checked = now
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp == self.file_stamp:
                return
            tokens = read_tokens_file(self.path)
        except OSError as exc:
            if self.file_stamp != "unreadable":
                log.error(
                    "auth: cannot read the tokens file %s (%s): only the configured tokens are accepted", self.path, exc
                )
            self.from_file, self.file_stamp = [], "unreadable"
            return
        if not tokens:
            log.error("auth: the tokens file %s holds no token", self.path)
        self.from_file, self.file_stamp = [digest(t) for t in tokens], stamp
        log.info("auth: %d token(s) read from %s", len(tokens), self.path)

    def accepts(self, token: str) -> bool:
        self.refresh()
        presented = digest(token)
        match = False
        for known in self.fixed + self.from_file:
            match |= hmac.compare_digest(presented, known)
        return match


def bearer_token(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class BearerAuth:
    """Pure ASGI middleware: 401 with ``WWW-Authenticate`` unless the request is open or carries a known token."""

    def __init__(self, app: ASGIApp, tokens: TokenSet, metrics_auth: bool) -> None:
        self.app = app
        self.tokens = tokens
        self.metrics_auth = metrics_auth

    def is_open(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if path in OPEN_PATHS or (path == METRICS_PATH and not self.metrics_auth) or path.startswith(ADMIN_PREFIX):
            return True
        sidecar = getattr(scope["app"].state, "sidecar", None) if "app" in scope else None
        return sidecar is not None and not sidecar.serves_own(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_open(scope):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is not None and self.tokens.accepts(token):
            await self.app(scope, receive, send)
            return
        if token is None:
            error = ServiceError(
                401, "unauthorized", "send Authorization: Bearer <token>", headers={"WWW-Authenticate": REALM}
            )
        else:
            challenge = f'{REALM}, error="invalid_token"'
            error = ServiceError(
                401, "invalid_token", "the bearer token is not valid", headers={"WWW-Authenticate": challenge}
            )
        request = Request(scope, receive)
        count_rejection(request, error)
        await error_response(request, error)(scope, receive, send)


def auth_enabled(settings: Settings) -> bool:
    return bool(settings.api_tokens) or settings.api_tokens_file is not None


def install(app, settings: Settings) -> None:
    """Authenticate requests when tokens are configured; without them the service is open, as before."""
    if auth_enabled(settings):
        tokens = TokenSet(settings.api_tokens, settings.api_tokens_file)  # here: a missing file fails at start-up
        app.add_middleware(BearerAuth, tokens=tokens, metrics_auth=settings.metrics_auth)
        log.info("auth: bearer tokens required (metrics %s)", "too" if settings.metrics_auth else "open")
