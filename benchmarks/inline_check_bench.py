"""Where a pixel tensor is best checked: on the event loop or in a decode thread (settings.inline_prepare_pixels).

Prints, for FashionMNIST-shaped tensors sent as numbers (float64, as JSON gives
them) of 1 to 128 images, the microseconds ``tensor_to_images`` takes on the
calling thread and the microseconds of the same call through a two-thread pool
awaited from an event loop (the trip the data plane makes otherwise). Below the
size where the two meet, the loop is the cheaper place. Best of 5 runs of 200.

    .venv/bin/python benchmarks/inline_check_bench.py
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.artifact import InputSpec
from service.decode import tensor_to_images

CALLS, RUNS = 200, 5
SPEC = InputSpec(shape=(1, 28, 28), color_mode="L")


def inline_us(array: np.ndarray) -> float:
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(CALLS):
            tensor_to_images(array, SPEC, False)
        best = min(best, (time.perf_counter() - start) / CALLS)
    return best * 1e6


async def pool_us(array: np.ndarray, pool: ThreadPoolExecutor) -> float:
    loop = asyncio.get_running_loop()
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(CALLS):
            await loop.run_in_executor(pool, functools.partial(tensor_to_images, array, SPEC, False))
        best = min(best, (time.perf_counter() - start) / CALLS)
    return best * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    with ThreadPoolExecutor(2) as pool:
        print("images  values  inline_us  pool_us")
        for images in (1, 8, 32, 83, 128):
            array = rng.integers(0, 256, (images, 28, 28)).astype(np.float64)
            pooled = asyncio.run(pool_us(array, pool))
            print(f"{images:6d}  {array.size:6d}  {inline_us(array):9.0f}  {pooled:7.0f}")


if __name__ == "__main__":
    main()
