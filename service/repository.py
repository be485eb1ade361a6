"""The model repository: every bundle under ``models_root`` (or those named in settings), ready to serve.

One :class:`ModelEntry` per ``name/version``: its manifest, its OOD detector and
its batcher (which owns the runtime and the worker thread). Loading is split in
two so the server can answer liveness at once: :meth:`ModelRepository.load`
reads manifests and checks file hashes; :meth:`ModelRepository.start` starts
the workers, which load the runtimes and warm up in the background - a model
is ready only once warm. A bundle that fails to load is reported (``GET
/models``, logs) and skipped; the others still serve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .artifact import ArtifactError, Manifest, discover_bundles, load_manifest
from .batcher import Batcher
from .errors import ServiceError
from .metrics import Metrics
from .ood import Detector
from .postprocess import make_postprocess
from .runtimes import load_runtime
from .settings import BUNDLED_DEFAULT_MODEL, Settings

log = logging.getLogger(__name__)

RuntimeFactory = Callable[[Manifest, Path, Settings], object]


def default_runtime_factory(manifest: Manifest, bundle_dir: Path, settings: Settings):
    return load_runtime(
        manifest,
        bundle_dir,
        backend=settings.runtime,
        device=settings.device,
        threads=settings.intra_op_threads,
        probe_batch=min(8, settings.max_batch_size),
    )


def _version_key(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


@dataclass
class ModelEntry:
    name: str
    version: str
    manifest: Manifest
    bundle_dir: Path
    detector: Detector
    batcher: Batcher

    @property
    def ready(self) -> bool:
        return self.batcher.ready

    def info(self) -> dict:
        runtime = self.batcher.runtime
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
            "backend": getattr(runtime, "backend", None),
            "device": getattr(runtime, "device", None),
            "runtime_timings_s": getattr(runtime, "timings", None) or None,
            "ready": self.ready,
            "error": self.batcher.load_error,
            "scores": list(self.detector.score_names),
            "default_score": self.detector.default_score,
            "default_alpha": self.detector.default_alpha,
            "calibration": self.detector.calibration_summary(),
            "metrics": self.manifest.metrics,
        }


class ModelRepository:
    def __init__(self, settings: Settings, metrics: Metrics, runtime_factory: RuntimeFactory | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.runtime_factory = runtime_factory or default_runtime_factory
        self.entries: dict[tuple[str, str], ModelEntry] = {}
        self.errors: dict[str, str] = {}

    def _wanted(self, name: str, version: str) -> bool:
        wanted = self.settings.models
        return not wanted or name in wanted or f"{name}/{version}" in wanted

    def load(self) -> None:
        """Read and verify every wanted bundle's manifest and build its detector and batcher."""
        for bundle_dir in discover_bundles(self.settings.models_root):
            name, version = bundle_dir.parent.name, bundle_dir.name
            if not self._wanted(name, version):
                continue
            try:
                manifest = load_manifest(bundle_dir, verify=self.settings.verify_files)
                detector = Detector.from_bundle(manifest, bundle_dir)
            except (ArtifactError, ValueError, OSError) as exc:
                self.errors[f"{name}/{version}"] = str(exc)
                log.error("skipping bundle %s: %s", bundle_dir, exc)
                continue
            self.entries[(manifest.name, manifest.version)] = ModelEntry(
                name=manifest.name,
                version=manifest.version,
                manifest=manifest,
                bundle_dir=bundle_dir,
                detector=detector,
                batcher=self._batcher(manifest, bundle_dir, detector),
            )
        missing = [m for m in self.settings.models if not any(self._match(m, key) for key in self.entries)]
        for m in missing:
            self.errors.setdefault(m, "named in settings but not found under models_root (or failed to load)")
        default = self.settings.default_model
        if default and not any(self._match(default, key) for key in self.entries):
            self.errors.setdefault(
                default, "OODGATE_DEFAULT_MODEL names it, but it is not loaded: requests naming no model get 404"
            )
        if not self.entries:
            raise ArtifactError(
                f"no servable model under {self.settings.models_root}"
                + (f" (wanted: {self.settings.models})" if self.settings.models else "")
                + (f"; errors: {self.errors}" if self.errors else "")
            )

    @staticmethod
    def _match(wanted: str, key: tuple[str, str]) -> bool:
        return wanted in (key[0], f"{key[0]}/{key[1]}")

    def _batcher(self, manifest: Manifest, bundle_dir: Path, detector: Detector) -> Batcher:
        settings, metrics = self.settings, self.metrics

        def load():
            runtime = self.runtime_factory(manifest, bundle_dir, settings)
            metrics.model_info.labels(manifest.name, manifest.version, runtime.backend, runtime.device).set(1)
            return runtime

        return Batcher(
            manifest.name,
            manifest.version,
            load,
            manifest.input.shape,
            metrics,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000.0,
            max_queue_images=settings.max_queue_images,
            dynamic=settings.dynamic_batching,
            warmup=settings.warmup,
            postprocess=make_postprocess(detector),
        )

    def start(self) -> None:
        for entry in self.entries.values():
            entry.batcher.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return all(entry.batcher.wait_loaded(timeout) for entry in self.entries.values())

    @property
    def ready(self) -> bool:
        return bool(self.entries) and all(entry.ready for entry in self.entries.values())

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.entries})

    def versions(self, name: str) -> list[str]:
        return sorted((v for n, v in self.entries if n == name), key=_version_key)

    def default_name(self) -> str:
        """The model a request that names none gets: the rule documented at ``Settings.default_model``."""
        if self.settings.default_model:
            return self.settings.default_model
        names = self.names()
        if BUNDLED_DEFAULT_MODEL in names:
            return BUNDLED_DEFAULT_MODEL
        if len(names) == 1:
            return names[0]
        raise ServiceError(
            400,
            "model_required",
            f"this server holds several models {names} and no default (OODGATE_DEFAULT_MODEL); name one with model=",
        )

    def get(self, name: str | None, version: str | None = None) -> ModelEntry:
        """The entry for ``name`` (default model if None) at ``version`` (latest if None); 404 if none."""
        if not name:
            name = self.default_name()
        if "/" in name and version is None:
            name, version = name.split("/", 1)
        versions = self.versions(name)
        if not versions:
            raise ServiceError(404, "unknown_model", f"no model named {name!r}; this server has {self.names()}")
        if version is None:
            version = versions[-1]
        entry = self.entries.get((name, version))
        if entry is None:
            raise ServiceError(404, "unknown_model", f"model {name!r} has no version {version!r}; it has {versions}")
        return entry

    def all(self) -> list[ModelEntry]:
        return [self.entries[key] for key in sorted(self.entries, key=lambda k: (k[0], _version_key(k[1])))]

    def begin_drain(self) -> None:
        for entry in self.entries.values():
            entry.batcher.begin_drain()

    @property
    def idle(self) -> bool:
        return all(entry.batcher.idle for entry in self.entries.values())

    def stop(self, timeout: float | None = None) -> None:
        for entry in self.entries.values():
            entry.batcher.stop(timeout)
