"""``POST /score`` and ``GET /models``: DESIGN.md's REST contract.

Three body types, all scored the same way: ``multipart/form-data`` with one or
more ``files`` parts (encoded images), JSON ``{"images": [{"b64": "..."}]}``,
and ``application/x-npy`` uint8 arrays ``[N,H,W]`` / ``[N,H,W,C]`` (``np.save``;
``allow_pickle`` is off). A single raw ``image/*`` body is accepted too. The
bodies are read by :mod:`service.extract`, the query by :mod:`service.params`.

When some images fail inference even alone, the answer is 500 with the first
failure in ``error`` and every image in ``results`` (failed ones as
``{"error": ...}``), so the work done for the others is not lost.

``POST /score`` is one plain Starlette route (:data:`SCORE_ROUTE`), not a
FastAPI one: FastAPI's per-request dependency solving, parameter validation and
exit stacks stood out in py-spy profiles of one-image requests, and this
endpoint uses none of them (it reads its own query and body). FastAPI does not
document such a route, so ``service/api/openapi.py`` does, from the same
parameter table (:data:`service.params.PARAMETERS`) the query is parsed with.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.routing import Route

from ..artifact import LEVEL_OUTPUTS, SCALAR_OUTPUTS
from ..dataplane import DataPlane, Scored, finite
from ..errors import ServiceError, bad_request
from ..extract import form_images, json_images, multipart_part_count, npy_array
from ..params import from_query
from ..request_context import context_of
from .body import media_type, read_body

router = APIRouter()


def dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


@router.get("/models")
async def models(request: Request) -> dict:
    repository = dataplane(request).repository
    try:
        default = repository.default_name()
    except ServiceError:
        default = None
    models = [dataplane(request).describe(e) for e in repository.all()]
    return {"default": default, "models": models, "errors": repository.errors}


async def score(request: Request) -> Response:
    """Score images (multipart ``files``, JSON ``{"images": [{"b64": ...}]}``, ``.npy`` or one raw image)."""
    received = time.monotonic()
    plane = dataplane(request)
    params = from_query(request.query_params)
    entry = plane.model(params.model, params.version)
    context_of(request).serving(entry)
    plane.admit(entry)
    limits = plane.settings
    body = await read_body(request, limits.max_request_bytes)
    if not body:
        raise bad_request("empty_body", "the request body is empty; send images")
    kind = media_type(request)
    if kind == "multipart/form-data":
        content_type = request.headers.get("content-type", "")
        plane.check_room(entry, multipart_part_count(content_type, body))  # overload refuses before the parse
        blobs = form_images(content_type, body, limits.max_images_per_request, limits.max_request_bytes)
        scored = await plane.score_encoded(entry, blobs, params, received)
    elif kind == "application/json":
        scored = await plane.score_encoded(entry, json_images(body), params, received)
    elif kind in ("application/x-npy", "application/npy"):
        scored = await plane.score_tensor(entry, npy_array(body), params, received)
    elif kind.startswith("image/"):
        scored = await plane.score_encoded(entry, [body], params, received)
    else:
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"Content-Type {kind or '(none)'} is not supported; send multipart/form-data, application/json "
            "or application/x-npy",
        )
    content, status = render(scored, params.levels)
    return JSONResponse(content, status_code=status)


SCORE_ROUTE = Route("/score", score, methods=["POST"], name="score")


def render(scored: Scored, levels: bool) -> tuple[dict, int]:
    """DESIGN.md's response body; status 500 when some image failed inference even alone."""
    results = []
    for i, decision in enumerate(scored.decisions):
        if decision is None:
            reason = scored.failures.get(i, "no result")
            results.append({"error": {"code": "inference_failed", "message": reason, "index": i}})
            continue
        result = {name: finite(scored.stats[name][i]) for name in SCALAR_OUTPUTS}
        if levels:
            for name in LEVEL_OUTPUTS:
                result[name] = [finite(v) for v in scored.stats[name][i]]
        result["scores"] = {name: finite(v) for name, v in decision.scores.items()}
        result["score"] = decision.score
        result["p_value"] = decision.p_value
        result["ood"] = decision.ood
        results.append(result)
    content = {
        "model": scored.entry.name,
        "version": scored.entry.version,
        "alpha": scored.alpha,
        "score": scored.score,
        "results": results,
    }
    if scored.decision is not None:  # only when the request (or the model's default) asked for another rule
        content["decision"] = scored.decision
    failure = scored.failure()
    if failure is not None:
        content.update(failure.body())
        return content, failure.status
    return content, 200
