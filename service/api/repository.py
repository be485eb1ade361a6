"""The Open Inference Protocol's model-repository extension under ``/v2/repository``.

So Triton and KServe tooling can manage models live (``tritonclient.http``'s
``get_model_repository_index``, ``load_model``, ``unload_model`` drive it in the
tests): ``index`` lists every version on disk or served with its state,
``load`` serves a model as it is on disk now (new versions loaded and warmed
beside the old, then switched to; a corrupt one refused while the old serves on),
``unload`` stops serving it. The logic is :class:`service.repository.ModelRepository`'s;
this module only translates HTTP. Errors come in the protocol's ``{"error": "..."}`` form.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..errors import bad_request
from ..repository import ModelRepository
from .body import read_body

router = APIRouter(prefix="/v2/repository")
MAX_BODY = 64 * 1024  # these bodies hold a few flags at most


def repository(request: Request) -> ModelRepository:
    return request.app.state.dataplane.repository


async def optional_json(request: Request) -> dict:
    body = await read_body(request, MAX_BODY)
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise bad_request("bad_json", f"the body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise bad_request("bad_json", "the body must be a JSON object")
    return document


@router.post("/index")
async def index(request: Request) -> Response:
    """Every model version on disk or served: name, version, state (READY, LOADING, UNAVAILABLE), reason."""
    document = await optional_json(request)
    rows = repository(request).index()
    if document.get("ready") is True:
        rows = [row for row in rows if row["state"] == "READY"]
    return JSONResponse(rows)


@router.post("/models/{name}/load")
async def load(request: Request, name: str) -> Response:
    """Serve ``name`` as it is on disk now; 400 naming each refused version (the others serve on)."""
    await optional_json(request)
    await repository(request).load_model(name)
    return Response(status_code=200)


@router.post("/models/{name}/unload")
async def unload(request: Request, name: str) -> Response:
    """Stop serving every version of ``name``; queued requests still finish on it."""
    await optional_json(request)
    await repository(request).unload_model(name)
    return Response(status_code=200)
