"""A minimal FashionMNIST classifier service: the thing oodgate's sidecar mode guards.

It is deliberately ordinary, the kind of image endpoint a team already runs:
``POST /predict`` takes one image (a multipart file part, a raw image body, or
JSON ``{"image": "<base64>"}``) and returns the label and class probabilities.
It knows nothing about oodgate; with oodgate in front (``oodgate-serve
--upstream``) an MNIST digit never reaches it, while a FashionMNIST item does.

Run it:  python examples/classifier/app.py --port 9000
    or:  uvicorn app:create_app --factory --app-dir examples/classifier --port 9000
Environment: ``CLASSIFIER_MODEL_DIR`` (default: this folder) holds ``model.pt``
(TorchScript) and ``manifest.json``; the file's sha256 is checked on load.
``CLASSIFIER_THREADS`` (default 1): torch threads; one is fastest for a model
this small and leaves the other cores to oodgate beside it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

HERE = Path(__file__).resolve().parent
MAX_BYTES = 4 << 20


class ClassifierError(Exception):
    """An error the client caused; rendered as ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class Classifier:
    """The TorchScript CNN plus its manifest; one forward pass per request, off the event loop."""

    def __init__(self, model_dir: Path) -> None:
        self.manifest = json.loads((model_dir / "manifest.json").read_text())
        entry = self.manifest["files"]["model"]
        path = model_dir / entry["path"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            raise RuntimeError(f"{path}: sha256 {digest[:12]}... does not match manifest.json")
        self.model = torch.jit.load(str(path), map_location="cpu").eval()
        self.labels: list[str] = list(self.manifest["labels"])
        self.shape = tuple(self.manifest["input"]["shape"])

    def decode(self, data: bytes) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        if not data:
            raise ClassifierError(400, "empty_body", "no image in the request")
        try:
            with Image.open(io.BytesIO(data)) as image:
                array = np.array(image.convert("L"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise ClassifierError(400, "not_an_image", f"cannot decode the image: {exc}") from exc
        if array.shape != self.shape[1:]:
            expected = f"{self.shape[2]}x{self.shape[1]}"
            raise ClassifierError(422, "wrong_size", f"expected a {expected} image, got {array.shape[::-1]}")
        return array

    @torch.no_grad()
    def predict(self, data: bytes) -> dict:
        array = self.decode(data)
        logits = self.model(torch.from_numpy(array)[None, None])
        probs = torch.softmax(logits, dim=1)[0].tolist()
        index = int(np.argmax(probs))
        return {
            "label": self.labels[index],
            "class_index": index,
            "probabilities": dict(zip(self.labels, (round(p, 6) for p in probs), strict=True)),
        }


async def image_bytes(request: Request) -> bytes:
    """The one image in a multipart part (any field name), a JSON ``image`` string, or the raw body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form()
        for value in form.values():
            if hasattr(value, "read"):
                return await value.read()
        raise ClassifierError(400, "no_file", "the multipart body has no file part")
    body = await request.body()
    if len(body) > MAX_BYTES:
        raise ClassifierError(413, "too_large", f"the body is over {MAX_BYTES} bytes")
    if content_type == "application/json":
        try:
            payload = json.loads(body)
            return base64.b64decode(payload["image"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ClassifierError(400, "bad_json", 'expected {"image": "<base64 image>"}') from exc
    return body


def create_app(model_dir: str | Path | None = None) -> FastAPI:
    model_dir = Path(model_dir or os.environ.get("CLASSIFIER_MODEL_DIR") or HERE)
    torch.set_num_threads(int(os.environ.get("CLASSIFIER_THREADS", "1")))
    classifier = Classifier(model_dir)
    app = FastAPI(title="fashion-cnn demo classifier")

    @app.exception_handler(ClassifierError)
    async def _classifier_error(request: Request, exc: ClassifierError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": classifier.manifest["name"], "version": classifier.manifest["version"]}

    @app.post("/predict")
    async def predict(request: Request, top_k: str | None = None) -> JSONResponse:
        k = len(classifier.labels)
        if top_k is not None:
            if not top_k.isdigit() or not 1 <= int(top_k) <= k:
                raise ClassifierError(422, "bad_top_k", f"top_k must be an integer in 1..{k}, got {top_k!r}")
            k = int(top_k)
        result = await run_in_threadpool(classifier.predict, await image_bytes(request))
        ranked = sorted(result["probabilities"].items(), key=lambda item: -item[1])[:k]
        result["probabilities"] = dict(ranked)
        return JSONResponse(result)

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--model-dir", default=None)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model_dir), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
