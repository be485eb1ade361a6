"""One model's pipeline on a batch: the stages a worker executes, named as anomalib names them.

- **pre-process**: bytes or tensors to ``uint8[N, C, H, W]`` in the model's
  input shape (decode, resize, channel rules). It runs before the images are
  queued, in the data plane's decode pool (:mod:`service.decode`), so the
  worker thread only ever sees batches ready for the graph.
- **forward**: the bundle's runtime (:mod:`service.runtimes`): the graph, plus
  the background graph and the flipped pass when the bundle has them.
- **post-process**: every score and its p-value, once per batch
  (:mod:`service.postprocess`), into a :class:`service.batch_result.BatchResult`.

The worker (:mod:`service.worker`) times the forward stage on its own (the
inference-duration metric) and calls the post-process right after, in the same
thread; a retried half runs both again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from .batch_result import BatchResult
from .postprocess import Postprocess
from .runtimes import Runtime

R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True)
class RuntimeInfo:
    """What ``GET /models`` and the v2 metadata say about the runtime a model runs on (None before it loads)."""

    backend: str | None = None
    device: str | None = None
    warnings: tuple[str, ...] = ()
    timings_s: dict[str, float] | None = None


class Pipeline(Protocol[R_co]):
    """What a worker executes: forward then post-process, plus the runtime's care (memory, closing)."""

    @property
    def runtime_info(self) -> RuntimeInfo: ...

    def forward(self, images: np.ndarray) -> Mapping[str, np.ndarray]: ...

    def postprocess(self, stats: Mapping[str, np.ndarray], images: np.ndarray) -> R_co: ...

    def release_memory(self) -> None: ...

    def close(self) -> None: ...


class ModelPipeline:
    """A bundle's runtime (forward) and its detector's scores and p-values (post-process)."""

    def __init__(self, runtime: Runtime, postprocess: Postprocess) -> None:
        self.runtime = runtime
        self._postprocess = postprocess

    @property
    def runtime_info(self) -> RuntimeInfo:
        runtime = self.runtime
        return RuntimeInfo(
            backend=getattr(runtime, "backend", None),
            device=getattr(runtime, "device", None),
            warnings=tuple(getattr(runtime, "warnings", None) or ()),
            timings_s=getattr(runtime, "timings", None) or None,
        )

    def forward(self, images: np.ndarray) -> Mapping[str, np.ndarray]:
        return self.runtime.run(images)

    def postprocess(self, stats: Mapping[str, np.ndarray], images: np.ndarray) -> BatchResult:
        return self._postprocess(stats, images)

    def release_memory(self) -> None:
        """After a failed batch (e.g. CUDA out of memory) give cached memory back before the halves run."""
        release = getattr(self.runtime, "release_memory", None)
        if release is not None:
            release()

    def close(self) -> None:
        close = getattr(self.runtime, "close", None)
        if close is not None:
            close()
