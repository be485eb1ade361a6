"""The Open Inference Protocol's tensors on the wire, both ways, with Triton's binary-tensor-data extension.

A request body is its JSON header, optionally followed by raw tensor bytes
(:data:`HEADER_LENGTH` says where the JSON ends). The one input tensor becomes
either a numeric array (``UINT8`` pixels; other numeric types are checked for
whole numbers in 0..255 later, by the data plane) or a list of encoded images
(``BYTES``: length-prefixed in binary, base64 strings in JSON). Outputs go back
as JSON ``data`` (non-finite numbers as ``null``) or, when asked for with
``binary_data``, as raw little-endian bytes after the JSON.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
from fastapi import Response

from ..errors import bad_request
from ..extract import base64_bytes
from .body import load_json

HEADER_LENGTH = "Inference-Header-Content-Length"
NUMERIC = {
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
    "FP64": np.float64,
}
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.bool_): "BOOL"}


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header and a view of the binary tensor data after it (no copy: the pixels reach the
    runtime through ``np.frombuffer`` on this view)."""
    if not body:
        raise bad_request("empty_body", "the request body is empty")
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise bad_request("bad_header_length", f"{HEADER_LENGTH} {header_length!r} is not a number") from None
        if not 0 < n <= len(body):
            raise bad_request("bad_header_length", f"{HEADER_LENGTH} {n} does not fit a {len(body)}-byte body")
        json_part, binary = body[:n], memoryview(body)[n:]
    else:
        json_part, binary = body, memoryview(b"")
    header = load_json(json_part, "the inference request")
    if not isinstance(header, dict):
        raise bad_request("bad_json", "the inference request must be a JSON object")
    return header, binary


def tensor_bytes(tensor: dict, binary: memoryview) -> memoryview | None:
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0 or size > len(binary):
        raise bad_request("bad_binary_size", f"binary_data_size {size!r} does not fit the {len(binary)} binary bytes")
    return binary[:size]


MAX_SHAPE_DIMS = 8


def shape_of(tensor: dict) -> list[int]:
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_SHAPE_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in shape)
    ):
        raise bad_request("bad_shape", f"input shape must be a list of at most {MAX_SHAPE_DIMS} non-negative integers")
    return shape


def numeric_tensor(tensor: dict, raw: memoryview | None, dtype) -> np.ndarray:
    shape = shape_of(tensor)
    if raw is not None:
        itemsize = np.dtype(dtype).itemsize
        if len(raw) != math.prod(shape) * itemsize:
            raise bad_request("bad_shape", f"{len(raw)} bytes do not make a {tensor.get('datatype')} tensor {shape}")
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    data = tensor.get("data")
    if data is None:
        raise bad_request("no_data", "the input has neither 'data' nor binary data")
    if not isinstance(data, list):
        raise bad_request("bad_data", "input 'data' must be a list of numbers")
    try:
        array = np.asarray(data, dtype=np.float64)  # checked for range and NaN before the uint8 cast
    except (ValueError, TypeError, OverflowError):
        raise bad_request("bad_data", "input 'data' must be a (nested) list of numbers") from None
    if array.size != math.prod(shape):
        raise bad_request("bad_data", f"{array.size} values do not make a tensor of shape {shape}")
    return array.reshape(shape)


def bytes_elements(tensor: dict, raw: memoryview | None) -> list[bytes]:
    shape = shape_of(tensor)
    count = math.prod(shape) if shape else 0
    if raw is not None:
        blobs, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise bad_request("bad_bytes", "truncated BYTES element length")
            (n,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + n > len(raw):
                raise bad_request("bad_bytes", f"BYTES element {len(blobs)} runs past the binary data", len(blobs))
            blobs.append(bytes(raw[offset : offset + n]))
            offset += n
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise bad_request("no_data", "BYTES input needs 'data' (base64 strings) or binary data")
        try:
            items = np.asarray(data, dtype=object).reshape(-1).tolist()
        except ValueError:
            raise bad_request("bad_data", "BYTES 'data' must be a (nested) list of base64 strings") from None
        blobs = [
            base64_bytes(item, f"BYTES element {index} is not a base64 string", index)
            for index, item in enumerate(items)
        ]
    if len(blobs) != count:
        raise bad_request("bad_shape", f"{len(blobs)} BYTES elements for shape {shape}")
    return blobs


def encode_outputs(tensors: dict[str, np.ndarray], wanted: list[tuple[str, bool]]) -> tuple[list[dict], list[bytes]]:
    """The ``outputs`` of a response, and the binary data that follows its JSON (in the same order)."""
    outputs, blobs = [], []
    for name, as_binary in wanted:
        array = tensors[name]
        spec = {"name": name, "datatype": DATATYPES[array.dtype], "shape": list(array.shape)}
        if as_binary:
            blob = np.ascontiguousarray(array).tobytes()
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif array.dtype.kind == "f":
            spec["data"] = [v if math.isfinite(v) else None for v in array.ravel().tolist()]
        else:
            spec["data"] = array.ravel().tolist()
        outputs.append(spec)
    return outputs, blobs


def response(content: dict, blobs: list[bytes]) -> Response:
    """JSON alone, or JSON followed by the binary outputs with :data:`HEADER_LENGTH` saying where it ends."""
    document = json.dumps(content, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return Response(document, media_type="application/json")
    return Response(
        document + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(document))},
    )
