"""``POST /score`` and ``GET /models``: DESIGN.md's REST contract.

Three body types, all scored the same way: ``multipart/form-data`` with one or
more ``files`` parts (encoded images), JSON ``{"images": [{"b64": "..."}]}``,
and ``application/x-npy`` uint8 arrays ``[N,H,W]`` / ``[N,H,W,C]`` (``np.save``;
``allow_pickle`` is off). A single raw ``image/*`` body is accepted too.

When some images fail inference even alone, the answer is 500 with the first
failure in ``error`` and every image in ``results`` (failed ones as
``{"error": ...}``), so the work done for the others is not lost.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import math
import time
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from ..dataplane import LEVEL_OUTPUTS, SCALAR_OUTPUTS, DataPlane, Scored, ScoreParams, finite
from ..errors import ServiceError, bad_request
from .body import load_json, media_type, read_body, replay

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


QUERY_PARAMETERS = [
    ("model", {"type": "string"}, "Model name (or name/version); default: the server's default."),
    ("version", {"type": "string"}, "Model version; default: the latest."),
    (
        "alpha",
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "False-positive bound of the OOD flag, in (0, 1); default: the model's.",
    ),
    ("score", {"type": "string"}, "Score that decides the flag; default: the model's."),
    ("levels", {"type": "boolean"}, "Also return log_pz and log_det per scale level."),
    (
        "timeout_ms",
        {"type": "number", "exclusiveMinimum": 0},
        "Deadline for this request in ms, > 0 (capped by settings); past it: 504.",
    ),
    (
        "fdr",
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "Flag the Benjamini-Hochberg discoveries at this false-discovery rate (0, 1); not with alpha.",
    ),
    (
        "conditional",
        {"type": "boolean"},
        "Calibration-conditional flags (FPR <= alpha with probability >= 1 - delta).",
    ),
    (
        "delta",
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "delta of the calibration-conditional flags, in (0, 1); implies conditional=true.",
    ),
]
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclass
class ScoreQuery:
    model: str | None = None
    version: str | None = None
    alpha: float | None = None
    score: str | None = None
    levels: bool = False
    timeout_ms: float | None = None
    fdr: float | None = None
    conditional: bool | None = None
    delta: float | None = None


def score_query(request: Request) -> ScoreQuery:
    """The query string of ``POST /score``, read by hand.

    FastAPI's per-request parameter machinery stood out in py-spy profiles of
    one-image requests; six optional scalars do not need it. Errors are the same
    422 ``invalid_parameter`` FastAPI's validation gave.
    """
    query, parsed = request.query_params, ScoreQuery()
    for name in ("model", "version", "score"):
        setattr(parsed, name, query.get(name))
    for name in ("alpha", "timeout_ms", "fdr", "delta"):
        raw = query.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ServiceError(422, "invalid_parameter", f"query.{name}: {raw!r} is not a number") from None
        if name == "timeout_ms" and not value > 0:
            raise ServiceError(422, "invalid_parameter", f"query.timeout_ms: must be greater than 0, got {raw!r}")
        setattr(parsed, name, value)
    raw = query.get("levels")
    if raw is not None:
        if raw.lower() not in TRUE | FALSE:
            raise ServiceError(422, "invalid_parameter", f"query.levels: {raw!r} is not a boolean")
        parsed.levels = raw.lower() in TRUE
    raw = query.get("conditional")
    if raw is not None:
        if raw.lower() not in TRUE | FALSE:
            raise ServiceError(422, "invalid_parameter", f"query.conditional: {raw!r} is not a boolean")
        parsed.conditional = raw.lower() in TRUE
    return parsed


@router.post(
    "/score",
    openapi_extra={
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": schema, "description": text}
            for name, schema, text in QUERY_PARAMETERS
        ]
    },
)
async def score(request: Request) -> Response:
    """Score images (multipart ``files``, JSON ``{"images": [{"b64": ...}]}``, ``.npy`` or one raw image)."""
    received = time.monotonic()
    plane = dataplane(request)
    query = score_query(request)
    entry = plane.model(query.model, query.version)
    request.scope.setdefault("oodgate", {})["model"] = (entry.name, entry.version)
    plane.admit(entry)
    body = await read_body(request, plane.settings.max_request_bytes)
    if not body:
        raise bad_request("empty_body", "the request body is empty; send images")
    timeout_s = None if query.timeout_ms is None else query.timeout_ms / 1000
    params = ScoreParams(
        alpha=query.alpha,
        score=query.score,
        timeout_s=timeout_s,
        fdr=query.fdr,
        conditional=query.conditional,
        delta=query.delta,
    )
    kind = media_type(request)
    if kind == "multipart/form-data":
        plane.check_room(entry, multipart_parts(request, body))  # overload refuses before the parse
        blobs = await multipart_images(replay(request, body), plane)
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
    content, status = render(scored, query.levels)
    return JSONResponse(content, status_code=status)


def multipart_parts(request: Request, body: bytes) -> int:
    """How many parts a multipart body holds, by counting its delimiters (no parsing); 1 if unsure.

    An upper bound on its images, cheap enough to refuse an overloaded server's requests
    before the full parse (which costs more than the refusal is worth).
    """
    boundary = request.headers.get("content-type", "").partition("boundary=")[2].split(";", 1)[0].strip('" ')
    if not boundary:
        return 1
    return max(
        1, body.count(b"\r\n--" + boundary.encode("latin-1")) + body.startswith(b"--" + boundary.encode("latin-1")) - 1
    )


async def multipart_images(request: Request, plane: DataPlane) -> list[bytes]:
    limit = plane.settings.max_images_per_request
    try:
        form = await request.form(max_files=limit, max_fields=limit, max_part_size=plane.settings.max_request_bytes)
    except (MultiPartException, HTTPException) as exc:  # starlette wraps parser errors in a 400 HTTPException
        message = str(getattr(exc, "message", None) or getattr(exc, "detail", exc))
        if "Too many files" in message or "Too many fields" in message:
            raise ServiceError(413, "too_many_images", f"{message} (images per request)") from None
        raise bad_request("bad_multipart", f"malformed multipart body: {message}") from None
    blobs = []
    try:
        for index, part in enumerate(form.getlist("files")):
            if isinstance(part, str):
                raise bad_request("not_a_file", f"part {index} of 'files' has no filename; send it as a file", index)
            blobs.append(await part.read())
    finally:
        await form.close()
    if not blobs:
        raise bad_request("no_images", "the multipart body has no 'files' parts")
    return blobs


def json_images(body: bytes) -> list[bytes]:
    document = load_json(body, "the body")
    items = document.get("images") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        raise bad_request("no_images", 'send {"images": [{"b64": "..."}, ...]} with at least one image')
    blobs = []
    for index, item in enumerate(items):
        data = item.get("b64") if isinstance(item, dict) else None
        if not isinstance(data, str):
            raise bad_request("bad_json", f'image {index} is not {{"b64": "<base64 string>"}}', index)
        try:
            blobs.append(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise bad_request("bad_base64", f"image {index} is not valid base64", index) from None
    return blobs


NPY_MAGIC = b"\x93NUMPY"
NPY_MAX_HEADER = 10000


@functools.lru_cache(maxsize=64)
def _npy_header(prefix: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """Parse a .npy header once: a client sending one shape sends the same header bytes every time.

    ``numpy``'s own parser (``ast.literal_eval`` of the header) stood out in py-spy
    profiles of one-image requests; the result depends only on these bytes, so it is cached.
    """
    stream = io.BytesIO(prefix)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=NPY_MAX_HEADER)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=NPY_MAX_HEADER)
    return dtype, shape, fortran, stream.tell()


def npy_array(body: bytes) -> np.ndarray:
    """A ``.npy`` body as an array (a read-only view of ``body``); pickled object arrays are refused."""
    try:
        if body[:6] != NPY_MAGIC or body[6] not in (1, 2, 3):
            raise ValueError("no .npy magic string (\\x93NUMPY) with a known version")
        size_bytes = 2 if body[6] == 1 else 4
        header_len = int.from_bytes(body[8 : 8 + size_bytes], "little")
        if header_len > NPY_MAX_HEADER:
            raise ValueError(f"header of {header_len} bytes is too long")
        dtype, shape, fortran, offset = _npy_header(bytes(body[: 8 + size_bytes + header_len]))
        if dtype.hasobject:
            raise ValueError("object arrays need pickle, which is refused")
        count = math.prod(shape)
        if len(body) - offset != count * dtype.itemsize:
            raise ValueError(f"{len(body) - offset} data bytes for shape {shape} of {dtype} ({count * dtype.itemsize})")
        return np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(
            shape, order="F" if fortran else "C"
        )
    except Exception as exc:  # noqa: BLE001 - anything that is not a plain .npy array is a malformed body
        raise bad_request("bad_npy", f"the body is not a .npy array (pickled arrays are refused): {exc}") from None


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
    if scored.failures:
        first = min(scored.failures)
        content["error"] = {
            "code": "inference_failed",
            "message": f"{len(scored.failures)} of {len(scored)} images failed inference: {scored.failures[first]}",
            "index": first,
        }
        return content, 500
    return content, 200
