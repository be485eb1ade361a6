"""One model's worker: its lifecycle (load, warm up, ready, finalize) and the one thread that runs its batches.

The shape is Triton's python backend: *initialize* loads the pipeline and
warms it up, *execute* runs one batch, *finalize* closes the runtime once the
queue is drained. The queue itself, the wait for company, the scatter and the
retry by halves are the batcher's (:mod:`service.batcher`); the worker owns
the thread and hands :meth:`Batcher.serve` its :meth:`ModelWorker.execute`.

Why load in the worker thread: the server answers liveness at once while
models load and warm up in the background; a model is *ready* only once warm,
so the first real request never pays for allocation or kernel selection. Each
batch size bucket (:func:`warmup_sizes`) runs once at start. A model that
fails to load is reported (``load_error``, ``GET /models``) and never ready;
the server and the other models serve on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic

import numpy as np

from .batch_run import R
from .batcher import Batcher
from .metrics import Metrics
from .pipeline import Pipeline, RuntimeInfo

log = logging.getLogger(__name__)


def warmup_sizes(max_batch_size: int) -> list[int]:
    """Batch-size buckets run once at start: powers of two up to, and including, the maximum."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


class ModelWorker(Generic[R]):
    """The lifecycle and thread of one model version; ``batcher`` is the queue it serves."""

    def __init__(
        self,
        name: str,
        version: str,
        load: Callable[[], Pipeline[R]],
        batcher: Batcher[R],
        input_shape: tuple[int, int, int],
        metrics: Metrics,
        *,
        warmup: bool = True,
    ) -> None:
        self.name, self.version = name, version
        self.batcher = batcher
        self.input_shape = tuple(input_shape)
        self.warmup = warmup
        self.pipeline: Pipeline[R] | None = None
        self.load_error: str | None = None
        self._load = load
        self._loaded = threading.Event()
        self._ready = False
        self._thread = threading.Thread(target=self._main, name=f"model-{name}-{version}", daemon=True)
        labels = (name, version)
        self._metrics = metrics
        self._m_infer = metrics.inference_duration.labels(*labels)
        self._m_batch = metrics.batch_size.labels(*labels)
        self._m_ready = metrics.model_ready.labels(*labels)
        self._m_ready.set(0)

    # ---- what the repository and the data plane ask ------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready and not self.batcher.draining

    @property
    def runtime_info(self) -> RuntimeInfo:
        """The runtime's backend, device, fallback warnings and timings (all None until it loaded)."""
        return self.pipeline.runtime_info if self.pipeline is not None else RuntimeInfo()

    def start(self) -> None:
        self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def begin_drain(self) -> None:
        """Not ready from now on; queued and running work still finishes."""
        self.batcher.begin_drain()
        self._m_ready.set(0)

    def stop(self, timeout: float | None = None) -> None:
        """Let the queue's work finish, then end the thread (bounded by ``timeout``)."""
        self.begin_drain()
        self.batcher.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the worker thread ---------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            if self.initialize():
                self.batcher.serve(self.execute, self.recover)
        finally:
            self.finalize()

    def initialize(self) -> bool:
        """Load the pipeline and warm it up; ready (and the queue open) only once warm. False if it failed."""
        try:
            self.pipeline = self._load()
            info = self.pipeline.runtime_info
            self._metrics.model_info.labels(self.name, self.version, info.backend, info.device).set(1)
            if self.warmup:
                for size in warmup_sizes(self.batcher.max_batch_size):
                    self.pipeline.forward(np.zeros((size, *self.input_shape), dtype=np.uint8))
        except Exception as exc:  # noqa: BLE001 - a model that cannot load must not take the server down
            self.load_error = f"model {self.name}/{self.version} failed to load: {type(exc).__name__}: {exc}"
            log.exception("%s", self.load_error)
            self.batcher.refuse(self.load_error)
            self._loaded.set()
            return False
        self.batcher.open()
        self._ready = True
        self._m_ready.set(1 if self.ready else 0)
        self._loaded.set()
        return True

    def execute(self, images: np.ndarray) -> R:
        """One batch: forward (timed: the inference-duration metric), then post-process."""
        began = time.perf_counter()
        stats = self.pipeline.forward(images)
        self._m_infer.observe(time.perf_counter() - began)
        self._m_batch.observe(len(images))
        return self.pipeline.postprocess(stats, images)

    def recover(self) -> None:
        """After a failed batch, before its halves run: give the runtime's cached memory back."""
        self.pipeline.release_memory()

    def finalize(self) -> None:
        """Close the runtime once nothing more will run on it."""
        if self.pipeline is not None:
            try:
                self.pipeline.close()
            except Exception:  # noqa: BLE001 - closing is best effort at the end of the thread
                log.exception("%s/%s: closing the runtime", self.name, self.version)
