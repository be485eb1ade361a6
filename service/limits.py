"""ASGI-level guards every request passes: body read deadlines, a memory budget for bodies, and
``Connection: close`` while draining.

Why here and not in the endpoints: each guard must hold for every route (``/score``,
``/v2``, the sidecar's proxy) and must act inside ``receive``/``send``, where the
bytes move.

* **Slow bodies** (slowloris on the body): each wait for the next chunk is bounded by
  ``body_idle_timeout_s``, and once a body has been read for that long its average
  rate must reach ``body_min_rate_bytes_s``. Past either: 408 with ``Connection:
  close``, so a 1-byte-per-second client holds a slot for seconds, not minutes, and
  cannot hold up a shutdown.
* **Memory**: the request bodies held by all requests together stay under
  ``max_buffered_body_bytes``. A body that would pass it (its ``Content-Length``, or
  its chunks as they arrive) gets 503 + ``Retry-After`` before it is read; unread
  bytes stay in the kernel (uvicorn pauses reading past 64 KiB), so 32 clients
  sending 28 MB each cost at most the budget, not 900 MB.
* **Draining**: once SIGTERM has begun the drain, every answer carries ``Connection:
  close``. A keep-alive client then sends its next request on a new connection,
  which the load balancer routes elsewhere (or which is refused at connect, a
  failure the client knows is safe to retry), never on a connection about to be cut.

Refusals are raised as :class:`ServiceError` from ``receive``, so the app's own error
handlers render them in the form of the route (DESIGN.md's or the V2 protocol's).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .errors import ServiceError
from .settings import Settings

CLOSE = {"Connection": "close"}


@dataclass
class BodyBudget:
    """Request-body bytes held by all requests now; used only on the event loop (no lock)."""

    limit: int
    used: int = 0

    def take(self, size: int, retry_after_s: int) -> None:
        if self.used + size > self.limit:
            raise ServiceError(
                503,
                "memory_budget",
                f"request bodies in memory would pass {self.limit} bytes ({self.used} held, {size} more); retry",
                # no Connection: close: uvicorn then reads and drops the unread body, so the client, still
                # sending, gets this answer instead of a reset connection
                headers={"Retry-After": str(retry_after_s)},
                reason="memory_budget",
            )
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size


def declared_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return None  # the endpoint refuses it with 400
    return None


class GuardedBody:
    """The ``receive`` of one request, with deadlines and the memory budget applied to its body."""

    def __init__(self, scope, receive, settings: Settings, budget: BodyBudget) -> None:
        self.scope, self.receive, self.settings, self.budget = scope, receive, settings, budget
        self.started: float | None = None
        self.received = 0
        self.held = 0
        self.done = False
        self.too_slow = False

    async def __call__(self):
        if self.done:  # the body is in: what follows (http.disconnect) is not ours to time
            return await self.receive()
        s = self.settings
        now = time.monotonic()
        if self.started is None:
            self.started = now
            declared = declared_length(self.scope)
            if declared and declared <= s.max_request_bytes:
                self._hold(declared)
        wait = s.body_idle_timeout_s
        if s.body_min_rate_bytes_s > 0:  # the moment the bytes so far fall under the minimum rate
            fails_at = self.started + max(s.body_idle_timeout_s, self.received / s.body_min_rate_bytes_s)
            wait = min(wait, fails_at - now)
        try:
            async with asyncio.timeout(max(0.0, wait)):
                message = await self.receive()
        except TimeoutError:
            elapsed = time.monotonic() - self.started
            self.too_slow = True
            raise ServiceError(
                408,
                "body_timeout",
                f"request body too slow: {self.received} bytes in {elapsed:.1f} s (a chunk is awaited at most "
                f"{s.body_idle_timeout_s:g} s, the average must reach {s.body_min_rate_bytes_s:g} bytes/s)",
                headers=dict(CLOSE),
                reason="body_timeout",
            ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.held:
                self._hold(self.received - self.held)
            if not message.get("more_body", False):
                self.done = True
        return message

    async def discard(self) -> None:
        """Read and drop the rest of the body (bounded by the idle timeout), holding none of it.

        Before an answer that closes the connection: closing with request bytes unread makes the
        kernel reset the connection, and the reset can wipe the answer from the client's buffer.
        """
        if self.too_slow:
            return  # a client cut for slowness is not waited for again
        try:
            async with asyncio.timeout(self.settings.body_idle_timeout_s):  # in all, whatever the client does
                while not self.done:
                    message = await self.receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        self.done = True
        except TimeoutError:
            pass

    def _hold(self, size: int) -> None:
        self.budget.take(size, self.settings.retry_after_s)
        self.held += size

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0


class RequestGuards:
    """Pure ASGI middleware: body deadlines and memory budget on every request; ``Connection: close`` while
    draining. ``draining`` is asked per answer (the data plane's flag)."""

    def __init__(self, app, settings: Settings, draining) -> None:
        self.app, self.settings, self.draining = app, settings, draining
        self.budget = BodyBudget(settings.max_buffered_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = GuardedBody(scope, receive, self.settings, self.budget)

        async def send_closing(message):
            if message["type"] == "http.response.start":
                closing = self.draining() or (b"connection", b"close") in message.get("headers", ())
                if closing and not body.done:
                    await body.discard()
                if self.draining():
                    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, body, send_closing)
        finally:
            body.release()
