"""Sidecar mode: oodgate as a reverse proxy in front of an image classifier.

Most users meet oodgate this way: they already run a classifier, and put
oodgate in front of it (``oodgate-serve --upstream URL``, ``OODGATE_UPSTREAM``).
oodgate's own endpoints (``/score``, ``/v2/...``, ``/metrics``, ...) keep
working; every other request on a proxied path (``sidecar_paths``; default:
all) is searched for images, which are scored in-process through the same data
plane and batcher as ``POST /score``, and then handled by ``sidecar_policy``:

``block``     fail closed: a request is forwarded only when every image in it
              was found, read and scored in-distribution. Any OOD image: 422
              ``out_of_distribution`` with the scores and p-values, and the
              request never reaches the classifier. An image oodgate cannot
              read: refused (400/413/415/422). No image found at all: 422
              ``no_image``, unless the path is one of
              ``sidecar_passthrough_paths``. A model without calibration has
              no flags to decide on: 503 ``not_calibrated``. With
              ``sidecar_fdr`` set, the request's flags are its
              Benjamini-Hochberg discoveries at that false-discovery rate
              (service/guarantees.py), so it is blocked when any image is a
              discovery.
``annotate``  forward, adding ``X-OOD``, ``X-OOD-P-Value`` (the smallest of the
              request's images), ``X-OOD-Score`` and ``X-OOD-Model`` to the
              forwarded request and to the response (``X-OOD: unknown`` for a
              model without calibration).
``shadow``    forward always, score alongside (concurrently, so the classifier's
              latency is not added to), only count.

The model that scores is fixed at start-up (:func:`sidecar_model`): ``sidecar_model``,
else ``default_model``, else the only model loaded; with several and none named,
the server refuses to start rather than gate with a guess.

Where images are looked for: everywhere, by their bytes rather than the
declared types (:mod:`service.extract`): raw bodies, every multipart part,
form values, JSON strings (strictly at ``sidecar_json_path``), query values;
raw or base64. An image-less request that is forwarded counts as
``outcome="unscored"``.

The path is put in normal form first (:mod:`service.urlpath`): ``//``
collapses, dot segments and encoded separators are refused with 400, and the
normal form is both what ``sidecar_paths`` match and what the upstream gets.

Forwarding, both ways, is :mod:`service.upstream`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Match

from .api.body import inflate, read_body
from .api.rest import render
from .dataplane import DataPlane, Scored
from .errors import ServiceError, bad_request, unprocessable
from .extract import ImageFinder
from .metrics import Metrics
from .params import ScoreParams
from .repository import ModelRepository
from .request_context import context_of
from .settings import Settings
from .upstream import Upstream
from .urlpath import NormalPath, normalise

log = logging.getLogger(__name__)

ENDPOINT = "sidecar"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class Verdict:
    """What scoring said about a request's images, for policy and headers."""

    ood: bool | None  # None: the model is not calibrated (no flag is made up)
    p_value: float | None  # the smallest p-value of the request's images
    scored: Scored | None = None
    error: ServiceError | None = None

    @property
    def header(self) -> str:
        if self.error is not None:
            return "error"
        return "unknown" if self.ood is None else str(bool(self.ood)).lower()


def sidecar_model(settings: Settings, repository: ModelRepository) -> str:
    """The one model that gates the upstream, fixed at start-up: ``sidecar_model``, else ``default_model``,
    else the only model loaded.

    Never guessed among several (not even the bundled default): a gate in front of
    one classifier must score with that classifier's model, and a wrong guess would
    pass or block the wrong images. Unresolvable, the server does not start.
    """
    name = settings.sidecar_model or settings.default_model
    loaded = [f"{e.name}/{e.version}" for e in repository.all()]
    if name is None:
        if len(repository.names()) == 1:
            return repository.names()[0]
        raise ValueError(
            f"sidecar mode with several models loaded ({', '.join(loaded)}): name the one that guards "
            f"{settings.upstream} with OODGATE_SIDECAR_MODEL (or --sidecar-model), or load only it (OODGATE_MODELS)"
        )
    try:
        repository.get(name)
    except ServiceError as exc:
        raise ValueError(f"sidecar model {name!r} is not loaded ({exc.message}); loaded: {', '.join(loaded)}") from None
    return name


class SidecarProxy:
    """The catch-all route's handler: find images, score them, apply the policy, forward."""

    def __init__(self, settings: Settings, plane: DataPlane, metrics: Metrics, own_routes: list) -> None:
        if not settings.upstream:
            raise ValueError("sidecar mode needs settings.upstream")
        self.settings = settings
        self.plane = plane
        self.metrics = metrics
        self.policy = settings.sidecar_policy
        self.own_routes = own_routes
        self.model = sidecar_model(settings, plane.repository)
        self.upstream = Upstream(settings, metrics, on_outcome=self.count)
        self.finder = ImageFinder(
            settings.sidecar_json_path, settings.max_request_bytes, settings.sidecar_max_multipart_parts
        )

    async def aclose(self) -> None:
        await self.upstream.aclose()

    # ---- routing ---------------------------------------------------------------------------------

    def proxied(self, path: str) -> bool:
        patterns = self.settings.sidecar_paths
        return not patterns or any(fnmatch.fnmatchcase(path, p) for p in patterns)

    def passes_without_images(self, path: str) -> bool:
        """A path where ``block`` forwards image-less requests: only those the settings name."""
        return any(fnmatch.fnmatchcase(path, p) for p in self.settings.sidecar_passthrough_paths)

    def serves_own(self, scope) -> bool:
        """Whether one of oodgate's own routes takes this request as sent (then oodgate's auth applies)."""
        return any(route.matches(scope)[0] != Match.NONE for route in self.own_routes)

    def own_path(self, request: Request, path: NormalPath) -> bool:
        """A path one of oodgate's own routes serves (with another method, or spelled oddly): never proxied."""
        return self.serves_own({**request.scope, "path": path.decoded, "raw_path": path.raw})

    # ---- the request ---------------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        received = time.monotonic()
        with self.plane.requests.track(request.scope, ENDPOINT) as context:
            try:
                response = await self.handle(request, received)
            except ServiceError as exc:
                context.status = exc.status
                if exc.status not in (404, 405):
                    self.count("refused")
                raise
            context.status = response.status_code
            return response

    async def handle(self, request: Request, received: float) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = normalise(raw_path)
        if self.own_path(request, path):
            if path.raw != raw_path:  # e.g. //score: neither proxied nor served in this spelling
                raise bad_request("bad_path", f"{path.decoded} is oodgate's own endpoint: send its path in normal form")
            raise ServiceError(405, "method_not_allowed", f"{request.method} {path.decoded} is oodgate's own")
        if not self.proxied(path.decoded):
            raise ServiceError(404, "not_proxied", f"{path.decoded} is not one of the proxied paths")
        self.plane.admit()
        body = await read_body(request, self.settings.max_request_bytes)
        if len(body) > self.settings.sidecar_inline_search_bytes:  # a large body's search would stall the loop
            blobs = await self.plane.blocking(self.images, request, body)
        else:
            blobs = self.images(request, body)
        if not blobs:
            if self.policy == "block" and not self.passes_without_images(path.decoded):
                raise unprocessable(
                    "no_image",
                    f"no image found in this request to {path.decoded}; the gate forwards only scored images "
                    "(image-less paths are allowed by OODGATE_SIDECAR_PASSTHROUGH_PATHS)",
                )
            self.count("unscored")
            return await self.forward(request, path, body, None)
        if self.policy == "shadow":
            scoring = asyncio.ensure_future(self.verdict(request, blobs, received))
            try:
                response = await self.forward(request, path, body, None)
            finally:
                try:
                    await scoring  # the scores land in the metrics; shadow never changes the answer
                except Exception:  # noqa: BLE001
                    log.exception("sidecar: shadow scoring failed")
            return response
        verdict = await self.verdict(request, blobs, received)
        if self.policy == "block":
            if verdict.error is not None:
                raise verdict.error
            if verdict.ood is None:  # nothing to decide on: refuse rather than wave it through
                entry = verdict.scored.entry
                raise ServiceError(
                    503,
                    "not_calibrated",
                    f"model {entry.name}/{entry.version} has no calibration, so block mode cannot decide",
                    reason="not_ready",
                )
            if verdict.ood:
                self.count("blocked")
                return self.blocked(verdict.scored)
        return await self.forward(request, path, body, verdict if self.policy == "annotate" else None)

    def images(self, request: Request, body: bytes) -> list[bytes]:
        """Every image in the request (empty: none found); what cannot be parsed raises 400 in ``block`` mode.

        The search runs on the body as the upstream will read it: a gzip or
        deflate ``Content-Encoding`` is inflated for the search (the original
        bytes are forwarded); an encoding oodgate cannot read is refused in
        ``block`` mode, since what it hides cannot be scored.
        """
        try:
            encoding = request.headers.get("content-encoding", "").strip().lower()
            inspected = inflate(body, encoding, self.settings.max_request_bytes)
            query = request.scope.get("query_string", b"")
            return self.finder.find(request.headers.get("content-type", ""), inspected, query)
        except ServiceError as exc:
            if self.policy == "block":
                raise
            log.info("sidecar: cannot read the images of %s: %s", request.url.path, exc.message)
            return []

    async def verdict(self, request: Request, blobs: list[bytes], received: float) -> Verdict:
        """Score the images with the sidecar's model; errors become a verdict, never an exception."""
        try:
            entry = self.plane.model(self.model)
            context_of(request).serving(entry)
            params = ScoreParams(fdr=self.settings.sidecar_fdr)  # fdr unset: the model's own rule
            scored = await self.plane.score_encoded(entry, blobs, params, received)
        except ServiceError as exc:
            return Verdict(None, None, error=exc)
        failure = scored.failure()
        if failure is not None:
            return Verdict(None, None, scored, failure)
        flags = [d.ood for d in scored.decisions]
        p_values = [d.p_value for d in scored.decisions if d.p_value is not None]
        ood = None if any(flag is None for flag in flags) else any(flags)
        return Verdict(ood, min(p_values) if p_values else None, scored)

    def blocked(self, scored: Scored) -> JSONResponse:
        content, _ = render(scored, levels=False)
        flagged = [i for i, d in enumerate(scored.decisions) if d is not None and d.ood]
        first = flagged[0]
        p = scored.decisions[first].p_value
        content["error"] = {
            "code": "out_of_distribution",
            "message": (
                f"{len(flagged)} of {len(scored)} images are out of distribution for "
                f"{scored.entry.name}/{scored.entry.version} (image {first}: {scored.score} p-value {p:.4g} <= "
                f"{self.rule_text(scored)}); the request was not forwarded"
            ),
            "index": first,
        }
        content = {"error": content.pop("error"), **content}
        return JSONResponse(content, status_code=422)

    @staticmethod
    def rule_text(scored: Scored) -> str:
        return f"alpha {scored.alpha}" if scored.rule is None else scored.rule.explain(scored.cutoff)

    # ---- forwarding --------------------------------------------------------------------------

    def ood_headers(self, verdict: Verdict) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-ood", verdict.header.encode())]
        if verdict.p_value is not None:
            headers.append((b"x-ood-p-value", f"{verdict.p_value:.6g}".encode()))
        if verdict.scored is not None:
            headers.append((b"x-ood-score", verdict.scored.score.encode()))
            headers.append((b"x-ood-model", f"{verdict.scored.entry.name}/{verdict.scored.entry.version}".encode()))
        if verdict.error is not None:
            headers.append((b"x-ood-error", verdict.error.code.encode()))
        return headers

    async def forward(self, request: Request, path: NormalPath, body: bytes, verdict: Verdict | None) -> Response:
        """To the upstream at the path's normal form (what was matched is what is forwarded)."""
        ood = [] if verdict is None else self.ood_headers(verdict)
        return await self.upstream.forward(request, path.raw, body, ood)

    def count(self, outcome: str) -> None:
        self.metrics.sidecar_requests.labels(self.policy, outcome).inc()


def install(app: FastAPI) -> SidecarProxy:
    """Add the catch-all proxy route after oodgate's own routes, and close the client after the drain."""
    settings: Settings = app.state.settings
    proxy = SidecarProxy(settings, app.state.dataplane, app.state.metrics, list(app.router.routes))
    app.state.sidecar = proxy
    app.add_api_route("/{path:path}", proxy, methods=METHODS, include_in_schema=False)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application):
        try:
            async with inner(application) as state:
                yield state
        finally:
            await proxy.aclose()  # after the app's own drain, which waits for in-flight proxied requests

    app.router.lifespan_context = lifespan
    paths = settings.sidecar_paths or "every path"
    log.info("sidecar mode: %s -> %s (policy %s, model %s)", paths, settings.upstream, proxy.policy, proxy.model)
    return proxy
