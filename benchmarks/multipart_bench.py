"""``POST /score``'s multipart parse: starlette's form parser (what /score used until issue 11) against
``service.extract.form_images`` (the one parser REST and the sidecar share now), in process.

Bodies of 1, 32 and 256 FashionMNIST-sized PNG parts (the committed test images, cycled).
Prints microseconds per parse, best of 5 runs; both parse the same bytes already read.

    .venv/bin/python -m benchmarks.multipart_bench
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from benchmarks.harness import REPO
from benchmarks.inline_check_bench import best_us
from service.extract import form_images

BOUNDARY = "benchmark-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def body_of(images: list[bytes]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + blob
        + b"\r\n"
        for i, blob in enumerate(images)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def starlette_form(body: bytes, limit: int) -> list[bytes]:
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", CONTENT_TYPE.encode())]}
    form = await Request(scope, receive).form(max_files=limit, max_fields=limit, max_part_size=len(body) + 1)
    try:
        return [await part.read() for part in form.getlist("files")]
    finally:
        await form.close()


def main() -> None:
    pngs = [path.read_bytes() for path in sorted((REPO / "tests" / "data").glob("fashion_*.png"))]
    loop = asyncio.new_event_loop()
    print("images  body_bytes  starlette_us  form_images_us")
    for count in (1, 32, 256):
        body = body_of([pngs[i % len(pngs)] for i in range(count)])
        assert loop.run_until_complete(starlette_form(body, count)) == form_images(CONTENT_TYPE, body, count, len(body))
        calls = max(10, 2000 // count)
        old = best_us(lambda body=body, count=count: loop.run_until_complete(starlette_form(body, count)), calls)
        new = best_us(lambda body=body, count=count: form_images(CONTENT_TYPE, body, count, len(body)), calls)
        print(f"{count:6d}  {len(body):10d}  {old:12.0f}  {new:14.0f}")
    loop.close()


if __name__ == "__main__":
    main()
