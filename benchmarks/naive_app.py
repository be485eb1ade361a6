"""The naive contestant of ``benchmarks/peers.py``: one ONNX Runtime call per request, no batching, no OOD work.

What most people write first: a FastAPI endpoint that parses the v2 JSON body, runs the
session on that request's images alone and returns ``bpd``. The session is
:class:`service.runtimes.OnnxGraph`, so its thread settings are oodgate's to the letter;
the endpoint is a plain ``def``, so FastAPI runs each request in its thread pool, as a
naive app would. The model file comes from ``PEERS_MODEL_ONNX``.
"""

import json
import os
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.runtimes import OnnxGraph

graph = OnnxGraph(Path(os.environ["PEERS_MODEL_ONNX"]), "cpu", int(os.environ.get("PEERS_THREADS", "0")))
app = FastAPI()


@app.get("/v2/health/ready")
def ready() -> dict:
    return {}


def infer(name: str, body: bytes) -> Response:
    tensor = json.loads(body)["inputs"][0]
    images = np.asarray(tensor["data"], dtype=np.uint8).reshape(tensor["shape"][0], 1, *tensor["shape"][1:3])
    bpd = graph(images)["bpd"]
    output = {"name": "bpd", "datatype": "FP32", "shape": [len(bpd)], "data": bpd.tolist()}
    answer = {"model_name": name, "outputs": [output]}
    return Response(json.dumps(answer), media_type="application/json")


@app.post("/v2/models/{name}/infer")
async def infer_endpoint(name: str, request: Request) -> Response:
    body = await request.body()
    return await run_in_threadpool(infer, name, body)
