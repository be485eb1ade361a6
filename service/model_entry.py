"""One served model version: its manifest, detector, worker and queue, and what ``GET /models`` says about it.

:func:`build_entry` wires a verified bundle into a servable entry: a
:class:`~service.batcher.Batcher` (the queue, bounded by the settings) and a
:class:`~service.worker.ModelWorker` whose pipeline is the bundle's runtime
followed by its detector's post-processing. Nothing runs until the repository
starts the worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import MANIFEST_NAME, Manifest
from .batch_result import BatchResult
from .batcher import Batcher
from .calibration_file import calibration_summary
from .metrics import Metrics
from .ood import Detector
from .pipeline import ModelPipeline
from .postprocess import make_postprocess
from .runtimes import Runtime, load_runtime
from .settings import Settings
from .worker import ModelWorker

RuntimeFactory = Callable[[Manifest, Path, Settings], Runtime]


def default_runtime_factory(manifest: Manifest, bundle_dir: Path, settings: Settings) -> Runtime:
    return load_runtime(
        manifest,
        bundle_dir,
        backend=settings.runtime,
        device=settings.device,
        threads=settings.intra_op_threads,
        probe_batch=min(8, settings.max_batch_size),
    )


def files_signature(bundle_dir: Path, manifest: Manifest) -> tuple:
    """Size and mtime of the manifest and every file it lists: cheap to take at each poll; a change means re-verify."""
    names = [MANIFEST_NAME, *sorted(entry.path for entry in manifest.files.values())]
    signature = []
    for name in names:
        try:
            stat = os.stat(bundle_dir / name)
            signature.append((name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            signature.append((name, None, None))
    return tuple(signature)


@dataclass
class ModelEntry:
    name: str
    version: str
    manifest: Manifest
    bundle_dir: Path
    detector: Detector
    worker: ModelWorker[BatchResult]
    signature: tuple = ()
    loaded_at: float = field(default_factory=time.time)  # wall clock, for people reading /models

    @property
    def batcher(self) -> Batcher[BatchResult]:
        """The model's queue: where the data plane reserves places and submits images."""
        return self.worker.batcher

    @property
    def ready(self) -> bool:
        return self.worker.ready

    @property
    def load_error(self) -> str | None:
        return self.worker.load_error

    @property
    def backend(self) -> str | None:
        """The runtime's backend (``onnx``, ``torchscript``); None until it loaded."""
        return self.worker.runtime_info.backend

    def info(self) -> dict:
        runtime = self.worker.runtime_info
        return {
            "name": self.name,
            "version": self.version,
            "input": {
                "name": self.manifest.input.name,
                "dtype": self.manifest.input.dtype,
                "shape": list(self.manifest.input.shape),
                "color_mode": self.manifest.input.color_mode,
            },
            "levels": self.manifest.levels,
            "backend": runtime.backend,
            "runtime_warnings": list(runtime.warnings),
            "device": runtime.device,
            "runtime_timings_s": runtime.timings_s,
            "ready": self.ready,
            "error": self.load_error,
            "scores": list(self.detector.score_names),
            "default_score": self.detector.default_score,
            "default_alpha": self.detector.default_alpha,
            "calibration": calibration_summary(self.detector),
            "metrics": self.manifest.metrics,
        }


def build_entry(
    manifest: Manifest,
    bundle_dir: Path,
    detector: Detector,
    settings: Settings,
    metrics: Metrics,
    runtime_factory: RuntimeFactory,
) -> ModelEntry:
    """A servable entry for a verified bundle: its queue and its worker (not started)."""
    batcher: Batcher[BatchResult] = Batcher(
        manifest.name,
        manifest.version,
        metrics,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_s=settings.max_batch_delay_ms / 1000.0,
        max_queue_images=settings.max_queue_images,
        dynamic=settings.dynamic_batching,
    )
    postprocess = make_postprocess(detector)

    def load() -> ModelPipeline:
        return ModelPipeline(runtime_factory(manifest, bundle_dir, settings), postprocess)

    worker = ModelWorker(
        manifest.name, manifest.version, load, batcher, manifest.input.shape, metrics, warmup=settings.warmup
    )
    return ModelEntry(
        name=manifest.name,
        version=manifest.version,
        manifest=manifest,
        bundle_dir=bundle_dir,
        detector=detector,
        worker=worker,
        signature=files_signature(bundle_dir, manifest),
    )
