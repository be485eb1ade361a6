"""service.api.v2_tensors: the protocol's tensors on the wire, both ways (pure functions, no server)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.api.v2_tensors import (
    HEADER_LENGTH,
    bytes_elements,
    encode_outputs,
    numeric_tensor,
    response,
    split_body,
    tensor_bytes,
)
from service.errors import ServiceError


def test_binary_tensor_data_reaches_numpy_without_a_copy():
    pixels = np.arange(2 * 28 * 28, dtype=np.uint8) % 251
    tensor = {"name": "images", "datatype": "UINT8", "shape": [2, 28, 28], "parameters": {"binary_data_size": 1568}}
    header = json.dumps({"inputs": [tensor]}).encode()
    body = header + pixels.tobytes()
    document, binary = split_body(body, str(len(header)))
    tensor = document["inputs"][0]
    array = numeric_tensor(tensor, tensor_bytes(tensor, binary), np.uint8)
    assert np.array_equal(array, pixels.reshape(2, 28, 28))
    assert np.shares_memory(array, np.frombuffer(body, dtype=np.uint8))


def test_bytes_elements_read_length_prefixed_binary_and_base64_json():
    blobs = [b"first", b"", b"third!"]
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in blobs)
    tensor = {"datatype": "BYTES", "shape": [3]}
    assert bytes_elements(tensor, memoryview(raw)) == blobs
    assert bytes_elements({**tensor, "data": ["Zmlyc3Q=", "", "dGhpcmQh"]}, None) == blobs
    for bad, code, index in (
        ((tensor, memoryview(raw[:-1])), "bad_bytes", 2),
        (({**tensor, "data": ["Zmlyc3Q=", "!", "dGhpcmQh"]}, None), "bad_base64", 1),
        (({"datatype": "BYTES", "shape": [2]}, memoryview(raw)), "bad_shape", None),
    ):
        with pytest.raises(ServiceError) as caught:
            bytes_elements(*bad)
        assert (caught.value.code, caught.value.index) == (code, index)


def test_outputs_go_back_as_json_or_as_binary_after_it():
    tensors = {"bpd": np.array([1.5, np.nan], np.float32), "ood": np.array([True, False])}
    outputs, blobs = encode_outputs(tensors, [("bpd", False), ("ood", True)])
    assert outputs == [
        {"name": "bpd", "datatype": "FP32", "shape": [2], "data": [1.5, None]},
        {"name": "ood", "datatype": "BOOL", "shape": [2], "parameters": {"binary_data_size": 2}},
    ]
    assert blobs == [b"\x01\x00"]
    answer = response({"outputs": outputs}, blobs)
    length = int(answer.headers[HEADER_LENGTH])
    assert json.loads(answer.body[:length]) == {"outputs": outputs} and answer.body[length:] == b"\x01\x00"
    assert response({"outputs": []}, []).headers["content-type"] == "application/json"
