"""The KServe / Triton Open Inference Protocol v2 (REST) under ``/v2``.

So that existing Triton and KServe clients and tooling work unchanged
(``tritonclient.http`` drives it in the tests), including Triton's
binary-tensor-data extension: a request may carry its JSON header followed by
raw tensor bytes (``Inference-Header-Content-Length`` says where the JSON
ends), and outputs asked for with ``binary_data`` come back the same way.
Request bodies compressed with ``Content-Encoding: gzip``/``deflate`` (what
``tritonclient`` sends with ``request_compression_algorithm``) are inflated
under the same size limit.

Input: one tensor, either ``UINT8`` pixels ``[N,H,W]`` / ``[N,H,W,C]`` (other
numeric types are accepted if every value is a whole number in 0..255), or
``BYTES [N]`` of encoded images (base64 strings in plain JSON). Outputs: the
artifact's six, plus ``score`` (FP64, the deciding score), and, for calibrated
models, ``p_value`` (FP64) and ``ood`` (BOOL). Request ``parameters``:
``alpha``, ``score``, ``timeout_ms``, ``binary_data_output``, and (service/guarantees.py)
``fdr`` (Benjamini-Hochberg over the request's images; not with ``alpha``),
``conditional`` (boolean) and ``delta`` (calibration-conditional flags); a rule
other than plain ``alpha`` is reported in the response's ``parameters.decision``.
The tensors' wire format, both ways, is :mod:`service.api.v2_tensors`; the
scoring parameters' table is :mod:`service.params`.
"""

from __future__ import annotations

import importlib.metadata
import time
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..artifact import OUTPUT_NAMES
from ..dataplane import DataPlane, Scored
from ..errors import bad_request
from ..params import ScoreParams, boolean, from_json
from ..repository import ModelEntry
from ..request_context import context_of
from .body import inflate, read_body
from .v2_tensors import (
    HEADER_LENGTH,
    NUMERIC,
    bytes_elements,
    encode_outputs,
    numeric_tensor,
    response,
    shape_of,
    split_body,
    tensor_bytes,
)

router = APIRouter(prefix="/v2")


def dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


def platform(entry: ModelEntry) -> str:
    return {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}.get(entry.backend, "oodgate")


def output_specs(entry: ModelEntry) -> list[dict]:
    levels = entry.manifest.levels
    specs = [
        {"name": n, "datatype": "FP32", "shape": [-1] if "levels" not in n else [-1, levels]} for n in OUTPUT_NAMES
    ]
    specs.append({"name": "score", "datatype": "FP64", "shape": [-1]})
    if entry.detector.fitted:
        specs += [
            {"name": "p_value", "datatype": "FP64", "shape": [-1]},
            {"name": "ood", "datatype": "BOOL", "shape": [-1]},
        ]
    return specs


def input_spec(entry: ModelEntry) -> dict:
    c, h, w = entry.manifest.input.shape
    return {"name": entry.manifest.input.name, "datatype": "UINT8", "shape": [-1, h, w] if c == 1 else [-1, h, w, c]}


# ---- health and metadata --------------------------------------------------------------------------


def server_version() -> str:
    try:
        return importlib.metadata.version("oodgate")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "0"


@router.get("")
async def server_metadata() -> dict:
    return {
        "name": "oodgate",
        "version": server_version(),
        "extensions": ["binary_tensor_data", "model_configuration", "model_repository"],
    }


@router.get("/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    plane = dataplane(request)
    ok = plane.repository.ready and not plane.draining
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict:
    plane = dataplane(request)
    entry = plane.model(name, version)
    return {
        "name": entry.name,
        "versions": plane.repository.versions(entry.name),
        "platform": platform(entry),
        "inputs": [input_spec(entry)],
        "outputs": output_specs(entry),
    }


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    plane = dataplane(request)
    entry = plane.model(name, version)
    ok = entry.ready and not plane.draining
    return JSONResponse({"name": entry.name, "ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def model_config(request: Request, name: str, version: str | None = None) -> dict:
    plane = dataplane(request)
    entry = plane.model(name, version)
    c, h, w = entry.manifest.input.shape
    dims = [h, w] if c == 1 else [h, w, c]
    return {
        "name": entry.name,
        "platform": platform(entry),
        "max_batch_size": plane.settings.max_images_per_request,
        "input": [{"name": entry.manifest.input.name, "data_type": "TYPE_UINT8", "dims": dims}],
        "output": [
            {"name": s["name"], "data_type": "TYPE_" + s["datatype"], "dims": s["shape"][1:] or [1]}
            for s in output_specs(entry)
        ],
        "dynamic_batching": {
            "enabled": plane.settings.dynamic_batching,
            "preferred_batch_size": [plane.settings.max_batch_size],
            "max_queue_delay_microseconds": int(plane.settings.max_batch_delay_ms * 1000),
        },
    }


# ---- inference ------------------------------------------------------------------------------------


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    received = time.monotonic()
    plane = dataplane(request)
    entry = plane.model(name, version)
    context_of(request).serving(entry)
    plane.admit(entry)
    limit = plane.settings.max_request_bytes
    body = inflate(await read_body(request, limit), request.headers.get("content-encoding"), limit)
    header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
    parsed = parse_infer_request(header, [spec["name"] for spec in output_specs(entry)])
    tensor, params = parsed.tensor, parsed.params
    shape = shape_of(tensor)
    if shape and shape[0] > 0:
        plane.check_room(entry, shape[0])  # overload refuses before the tensor is built or its images decoded
    raw = tensor_bytes(tensor, binary)
    if parsed.datatype == "BYTES":
        blobs = bytes_elements(tensor, raw)
        scored = await plane.score_encoded(entry, blobs, params, received)
    else:
        array = numeric_tensor(tensor, raw, NUMERIC[parsed.datatype])
        scored = await plane.score_tensor(entry, array, params, received)
    failure = scored.failure()
    if failure is not None:
        raise failure
    return respond(entry, parsed, scored)


@dataclass
class InferRequest:
    """An inference request's JSON, checked field by field before any work is done."""

    id: str | None
    tensor: dict
    datatype: str
    params: ScoreParams
    outputs: list[tuple[str, bool]] | None  # (name, as binary); None: every output
    binary_default: bool


def optional_object(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("bad_parameters", f"{what} must be an object, got {type(value).__name__}")
    return value


def parse_infer_request(header: dict, output_names: list[str]) -> InferRequest:
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("bad_id", "'id' must be a string")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad_request("bad_inputs", "send exactly one input tensor: UINT8 pixels or BYTES encoded images")
    tensor = inputs[0]
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in NUMERIC):
        raise bad_request(
            "bad_datatype", f"input datatype {str(datatype)[:40]!r}: send UINT8 pixels or BYTES encoded images"
        )
    optional_object(tensor.get("parameters"), "the input's 'parameters'")
    parameters = optional_object(header.get("parameters"), "'parameters'")
    params = from_json(parameters)
    binary_default = boolean(parameters.get("binary_data_output"), "binary_data_output") or False
    return InferRequest(
        request_id, tensor, datatype, params, requested_outputs(header, output_names, binary_default), binary_default
    )


def requested_outputs(header: dict, output_names: list[str], binary_default: bool) -> list[tuple[str, bool]] | None:
    requested = header.get("outputs")
    if requested is None:
        return None
    if not isinstance(requested, list):
        raise bad_request("bad_outputs", "'outputs' must be a list")
    wanted = []
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in output_names:
            why = " (this model is not calibrated)" if name in ("p_value", "ood") else ""
            shown = name if isinstance(name, str) else type(name).__name__
            raise bad_request("unknown_output", f"no output {str(shown)[:40]!r}{why}; outputs are {output_names}")
        parameters = optional_object(item.get("parameters"), f"the parameters of output {name!r}")
        as_binary = boolean(parameters.get("binary_data"), "binary_data")
        wanted.append((name, binary_default if as_binary is None else as_binary))
    return wanted


def result_tensors(entry: ModelEntry, scored: Scored) -> dict[str, np.ndarray]:
    tensors = {name: np.asarray(scored.stats[name], dtype=np.float32) for name in OUTPUT_NAMES}
    decisions = scored.decisions
    tensors["score"] = np.array([d.scores[d.score] for d in decisions], dtype=np.float64)
    if entry.detector.fitted:
        tensors["p_value"] = np.array([d.p_value for d in decisions], dtype=np.float64)
        tensors["ood"] = np.array([bool(d.ood) for d in decisions], dtype=np.bool_)
    return tensors


def respond(entry: ModelEntry, parsed: InferRequest, scored: Scored) -> Response:
    tensors = result_tensors(entry, scored)
    wanted = parsed.outputs
    if wanted is None:
        wanted = [(name, parsed.binary_default) for name in tensors]
    outputs, blobs = encode_outputs(tensors, wanted)
    content = {
        "model_name": entry.name,
        "model_version": entry.version,
        "outputs": outputs,
        "parameters": {"alpha": scored.alpha, "score": scored.score},
    }
    if scored.decision is not None:
        content["parameters"]["decision"] = scored.decision
    if parsed.id is not None:
        content["id"] = parsed.id
    return response(content, blobs)
