"""One request's context, and the one place request metrics are recorded.

A scoring request's metrics need what only its endpoint learns (which model
served it) and what only the outermost layer sees (the status sent, the time
taken). :class:`RequestContext` carries the first out to the second: it is
created when the request arrives (:meth:`RequestTracker.track`), kept in the
ASGI scope under one key, and found by the endpoints and the error handlers with
:func:`context_of`. :class:`RequestTracker` records every such request, whoever
serves it (``POST /score`` and ``/v2/.../infer`` through :class:`RequestMetrics`,
the sidecar's proxied requests directly), and counts the requests in flight
that a graceful drain waits for (``DataPlane.drain``). The metrics themselves
are defined in :mod:`service.metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .metrics import Metrics

if TYPE_CHECKING:  # for the annotation only: the context needs no part of the repository to run
    from .repository import ModelEntry

NO_MODEL = ("", "")  # the labels of a request no loaded model served (never the client's string)
SCOPE_KEY = "oodgate.request"


@dataclass
class RequestContext:
    """What one request's metrics need, filled in while it is handled."""

    endpoint: str  # the route template (the ``endpoint`` label)
    model: tuple[str, str] = NO_MODEL  # (name, version) once the endpoint has picked a loaded model
    status: int = 500  # the answer's status; 500 until one is sent

    def serving(self, entry: ModelEntry) -> None:
        """The request is for this loaded model."""
        self.model = (entry.name, entry.version)


def context_of(scope: Mapping) -> RequestContext:
    """The request's context (a Starlette ``Request`` is a scope too); one nobody records if it is not tracked."""
    context = scope.get(SCOPE_KEY)
    return context if context is not None else RequestContext(endpoint="")


class RequestTracker:
    """Counts the requests in flight and records each one's count, status and latency, per endpoint and model."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._inflight = 0
        self._children: dict[tuple, tuple] = {}
        self._gauges: dict[str, object] = {}  # endpoint -> its in-flight gauge child (labels() locks per call)

    @property
    def inflight(self) -> int:
        """Requests being handled now (what a graceful drain waits for)."""
        return self._inflight

    @contextmanager
    def track(self, scope: MutableMapping, endpoint: str) -> Iterator[RequestContext]:
        """Record the request handled inside; the context may change its endpoint, model and status meanwhile."""
        began = time.perf_counter()
        context = RequestContext(endpoint)
        scope[SCOPE_KEY] = context
        gauge = self._gauges.get(endpoint)
        if gauge is None:
            gauge = self._gauges[endpoint] = self.metrics.inflight.labels(endpoint)
        self._inflight += 1
        gauge.inc()
        try:
            yield context
        finally:
            self._inflight -= 1
            gauge.dec()
            self._record(context, time.perf_counter() - began)

    def _record(self, context: RequestContext, seconds: float) -> None:
        key = (context.endpoint, *context.model, context.status)
        children = self._children.get(key)
        if children is None:  # labels are few (routes x models x codes): cache the children
            children = (
                self.metrics.requests.labels(context.endpoint, *context.model, str(context.status)),
                self.metrics.request_duration.labels(context.endpoint, *context.model),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


SCORE_ENDPOINT = "/score"
INFER_ENDPOINT = "/v2/models/{name}/infer"


def scoring_family(path: str) -> str | None:
    if path == SCORE_ENDPOINT:
        return SCORE_ENDPOINT
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return INFER_ENDPOINT
    return None


class RequestMetrics:
    """Pure ASGI middleware that tracks the scoring requests (``/score``, ``/v2/.../infer``).

    Pure ASGI (not ``BaseHTTPMiddleware``) to keep the per-request overhead
    small. The endpoint label is the route template that served the request
    (e.g. ``/v2/models/{name}/versions/{version}/infer``), known once routed;
    the in-flight gauge, set before routing, uses the path's family.
    """

    def __init__(self, app, tracker: RequestTracker) -> None:
        self.app, self.tracker = app, tracker

    async def __call__(self, scope, receive, send):
        family = scoring_family(scope.get("path", "")) if scope["type"] == "http" else None
        if family is None:
            await self.app(scope, receive, send)
            return
        with self.tracker.track(scope, family) as context:

            async def send_status(message):
                if message["type"] == "http.response.start":
                    context.status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                context.endpoint = getattr(scope.get("route"), "path", None) or family
