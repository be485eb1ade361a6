"""A model whose answers are known, for the batcher's, the batch run's and the worker's tests.

:class:`FakeRuntime` gives ``bpd`` = the mean pixel of each image, can be held at
a gate, and fails on all-255 images; :func:`make_worker` serves it through the
real worker and queue with an identity post-process.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from service.batch_result import BatchResult
from service.batcher import Batcher
from service.metrics import Metrics
from service.pipeline import ModelPipeline
from service.worker import ModelWorker

SHAPE = (1, 2, 2)


class FakeRuntime:
    """bpd = mean pixel (so each image's answer is known); can be held at a gate; fails on all-255 images."""

    backend, device = "fake", "cpu"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.closed = False

    def run(self, images):
        self.entered.set()
        assert self.gate.wait(30)
        flat = images.reshape(len(images), -1)
        if (flat == 255).all(axis=1).any():
            raise MemoryError("poisoned image")
        self.batches.append(len(images))
        mean = flat.mean(axis=1).astype(np.float32)
        return {"bpd": mean, "log_pz_levels": np.stack([mean, -mean], axis=1)}

    def close(self) -> None:
        self.closed = True


def outputs_only(stats, images) -> BatchResult:
    """A post-process that keeps the runtime's outputs as they are (no scores)."""
    return BatchResult(dict(stats))


def make_worker(
    runtime_or_load, metrics: Metrics | None = None, *, start: bool = True, warmup: bool = False, **options
) -> ModelWorker:
    """A started worker (by default waited for until ready) serving ``runtime`` through its own queue."""
    options = {"max_batch_size": 4, "max_batch_delay_s": 0.0, "max_queue_images": 64, **options}
    metrics = metrics or Metrics(process=False)
    batcher = Batcher("fake", "1", metrics, **options)
    if callable(runtime_or_load) and not hasattr(runtime_or_load, "run"):
        load = runtime_or_load
    else:

        def load():
            return ModelPipeline(runtime_or_load, outputs_only)

    worker = ModelWorker("fake", "1", load, batcher, SHAPE, metrics, warmup=warmup)
    if start:
        worker.start()
    return worker


def images_with_means(means) -> np.ndarray:
    return np.stack([np.full(SHAPE, m, dtype=np.uint8) for m in means])


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


async def wait_for(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition never became true"
        await asyncio.sleep(0.005)
