"""Where work is best done: on the event loop or in a decode thread (settings.inline_prepare_pixels and
settings.sidecar_inline_search_bytes).

Prints, for FashionMNIST-shaped tensors sent as numbers (float64, as JSON gives
them) of 1 to 128 images, the microseconds ``tensor_to_images`` takes on the
calling thread and the microseconds of the same call through a two-thread pool
awaited from an event loop (the trip the data plane makes otherwise); then the
same for the sidecar's image search (``ImageFinder.find``) on multipart bodies
of 1 to 64 PNG parts. Where the inline time reaches what the trip adds, the
loop stops being the cheaper place. Best of 5 runs of 200.

    .venv/bin/python -m benchmarks.inline_check_bench
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks.harness import REPO
from service.artifact import InputSpec
from service.decode import tensor_to_images
from service.extract import ImageFinder

CALLS, RUNS = 200, 5
SPEC = InputSpec(shape=(1, 28, 28), color_mode="L")


BOUNDARY = "bench"
FINDER = ImageFinder("image.*", 1 << 30, 1000)  # JSON bodies: {"image": ["<base64>", ...]}


def best_us(fn, calls: int = CALLS) -> float:
    """Microseconds per call of ``fn`` on this thread, best of :data:`RUNS` runs of ``calls``."""
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


async def pool_us(fn, pool: ThreadPoolExecutor) -> float:
    loop = asyncio.get_running_loop()
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(CALLS):
            await loop.run_in_executor(pool, fn)
        best = min(best, (time.perf_counter() - start) / CALLS)
    return best * 1e6


def multipart(pngs: list[bytes]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"; filename="{i}.png"\r\n'
        "Content-Type: text/plain\r\n\r\n".encode()
        + png
        + b"\r\n"  # a declared type the search does not trust
        for i, png in enumerate(pngs)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def json_body(pngs: list[bytes]) -> bytes:
    return json.dumps({"image": [base64.b64encode(png).decode() for png in pngs]}).encode()


def main() -> None:
    rng = np.random.default_rng(0)
    with ThreadPoolExecutor(2) as pool:
        print("images  values  inline_us  pool_us")
        for images in (1, 8, 32, 83, 128):
            array = rng.integers(0, 256, (images, 28, 28)).astype(np.float64)
            check = functools.partial(tensor_to_images, array, SPEC, False)
            pooled = asyncio.run(pool_us(check, pool))
            print(f"{images:6d}  {array.size:6d}  {best_us(check):9.0f}  {pooled:7.0f}")
        pngs = [path.read_bytes() for path in sorted((REPO / "tests" / "data").glob("fashion_*.png"))]
        print("\nsidecar search: body       images  body_bytes  inline_us  pool_us")
        for parts in (1, 8, 32, 64):
            chosen = [pngs[i % len(pngs)] for i in range(parts)]
            bodies = {
                "multipart": (f"multipart/form-data; boundary={BOUNDARY}", multipart(chosen)),
                "json base64": ("application/json", json_body(chosen)),
            }
            for kind, (content_type, body) in bodies.items():
                search = functools.partial(FINDER.find, content_type, body)
                pooled = asyncio.run(pool_us(search, pool))
                print(f"{kind:>26}  {parts:6d}  {len(body):10d}  {best_us(search):9.0f}  {pooled:7.0f}")


if __name__ == "__main__":
    main()
