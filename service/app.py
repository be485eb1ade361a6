"""``create_app``: the FastAPI application factory (``uvicorn service.app:create_app --factory``).

Wiring only: settings -> metrics -> model repository -> data plane -> routers.
Manifests are read and verified here, synchronously, so a broken repository
fails at start-up; runtimes load and warm up in each model's worker thread
after start-up, while liveness already answers and readiness says "not yet".
On shutdown the lifespan refuses new work, lets queued and in-flight requests
finish (bounded by ``drain_timeout_s``), then stops the workers.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from .api import admin, auth, errors, openapi, rest, v2
from .api import repository as repository_api
from .dataplane import DataPlane
from .limits import RequestGuards
from .metrics import Metrics
from .repository import ModelRepository, RuntimeFactory
from .request_context import RequestMetrics
from .settings import Settings

log = logging.getLogger("service")


def create_app(settings: Settings | None = None, runtime_factory: RuntimeFactory | None = None) -> FastAPI:
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = Metrics()
    repository = ModelRepository(settings, metrics, runtime_factory)
    repository.load()
    plane = DataPlane(settings, repository, metrics)
    repository.on_loaded.append(lambda entry: plane.drift.attach([entry]))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        repository.start()
        log.info("serving %s from %s", [f"{e.name}/{e.version}" for e in repository.all()], settings.models_root)
        polling = None
        if settings.poll_models_s > 0:  # live model management (issue 14): follow models_root
            polling = asyncio.create_task(repository.poll_forever(settings.poll_models_s))
        try:
            yield
        finally:
            if polling is not None:
                polling.cancel()
            plane.begin_drain()
            await plane.drain(settings.drain_timeout_s)
            await asyncio.to_thread(plane.close, settings.drain_timeout_s)

    app = FastAPI(
        title="oodgate",
        summary="Flow-based out-of-distribution gate for image models",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.dataplane = plane
    errors.install(app)
    app.include_router(rest.router)  # GET /models
    app.router.routes.append(rest.SCORE_ROUTE)  # POST /score: a plain Starlette route (rest.py says why)
    app.include_router(v2.router)
    app.include_router(admin.router)  # POST /admin/drift/reset (token only)
    app.include_router(repository_api.router)  # the V2 model-repository extension (issue 14)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if settings.upstream:  # sidecar mode (issue 5): a catch-all proxy route after every own route
        from .sidecar import install as install_sidecar

        install_sidecar(app)
    openapi.install(app, settings)
    auth.install(app, settings)  # inside RequestMetrics: a 401 on /score is counted like any answer
    app.add_middleware(RequestMetrics, tracker=plane.requests)
    # outermost: body deadlines and memory budget for every route; Connection: close while draining
    app.add_middleware(RequestGuards, settings=settings, draining=lambda: plane.draining)
    return app
