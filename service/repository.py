"""The model repository: every bundle under ``models_root`` (or those named in settings), ready to serve.

One :class:`~service.model_entry.ModelEntry` per ``name/version``: its manifest,
its OOD detector, its worker (the runtime and its thread) and its queue. Loading is split in
two so the server can answer liveness at once: :meth:`ModelRepository.load`
reads manifests and checks file hashes; :meth:`ModelRepository.start` starts
the workers, which load the runtimes and warm up in the background - a model
is ready only once warm. A bundle that fails to load is reported (``GET
/models``, logs) and skipped; the others still serve.

Live management (issue 14; the Open Inference Protocol's model-repository
extension in :mod:`service.api.v2`, and ``poll_models_s``): :meth:`ModelRepository.sync`
makes what is served follow what is on disk for one model. A new or changed
version directory is loaded and warmed beside what serves (its own queue and
worker thread), and only once warm put in the table, one dict assignment: the
switch is atomic, and "latest" moves to it. A version that fails (sha256
mismatch, a graph that does not load, a warm-up that raises) is refused and
what served before serves on. A removed version leaves the table at once; its
worker finishes what was queued before it stops (:meth:`ModelRepository.retire`).
Files changed on disk under a loaded version are noticed by their size and
mtime at each sync or poll and re-verified; a mismatch is logged and shown in
``errors`` while the copy in memory, verified at load, keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .artifact import ArtifactError, Manifest, discover_bundles, load_manifest
from .calibration_file import load_detector
from .errors import ServiceError
from .metrics import Metrics
from .model_entry import ModelEntry, RuntimeFactory, build_entry, default_runtime_factory, files_signature
from .ood import Detector
from .settings import BUNDLED_DEFAULT_MODEL, Settings, selects

log = logging.getLogger(__name__)


def _version_key(version: str):
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


# a retired version's worker stops once idle this long (or, at the latest, after request_timeout_s)
RETIRE_SETTLE_S = 1.0


class ModelRepository:
    def __init__(self, settings: Settings, metrics: Metrics, runtime_factory: RuntimeFactory | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.runtime_factory = runtime_factory or default_runtime_factory
        self.entries: dict[tuple[str, str], ModelEntry] = {}
        self.errors: dict[str, str] = {}
        self.unloaded: set[str] = set()  # names unloaded through the API: polling leaves them alone
        self.on_loaded: list[Callable[[ModelEntry], None]] = []  # told of each version put in service live
        self._refused: dict[Path, tuple] = {}  # bundle dir -> files signature already refused (not retried)
        self._sync_lock = asyncio.Lock()

    def _wanted(self, name: str, version: str) -> bool:
        return not self.settings.models or selects(self.settings.models, name, version)

    def load(self) -> None:
        """Read and verify every wanted bundle's manifest and build its detector, queue and worker."""
        for bundle_dir in discover_bundles(self.settings.models_root):
            name, version = bundle_dir.parent.name, bundle_dir.name
            if not self._wanted(name, version):
                continue
            try:
                manifest = load_manifest(bundle_dir, verify=self.settings.verify_files)
                detector = load_detector(manifest, bundle_dir)
            except (ArtifactError, ValueError, OSError) as exc:
                self.errors[f"{name}/{version}"] = str(exc)
                log.error("skipping bundle %s: %s", bundle_dir, exc)
                continue
            self.entries[(manifest.name, manifest.version)] = self._entry(manifest, bundle_dir, detector)
        missing = [m for m in self.settings.models if not any(selects((m,), *key) for key in self.entries)]
        for m in missing:
            self.errors.setdefault(m, "named in settings but not found under models_root (or failed to load)")
        default = self.settings.default_model
        if default and not any(selects((default,), *key) for key in self.entries):
            self.errors.setdefault(
                default, "OODGATE_DEFAULT_MODEL names it, but it is not loaded: requests naming no model get 404"
            )
        if not self.entries:
            raise ArtifactError(
                f"no servable model under {self.settings.models_root}"
                + (f" (wanted: {self.settings.models})" if self.settings.models else "")
                + (f"; errors: {self.errors}" if self.errors else "")
            )

    def _entry(self, manifest: Manifest, bundle_dir: Path, detector: Detector) -> ModelEntry:
        return build_entry(manifest, bundle_dir, detector, self.settings, self.metrics, self.runtime_factory)

    def start(self) -> None:
        for entry in self.entries.values():
            entry.worker.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return all(entry.worker.wait_loaded(timeout) for entry in self.entries.values())

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
        if not names:  # every model unloaded: nothing to name, and nothing a default could mean
            raise ServiceError(404, "unknown_model", "this server serves no model now; load one first")
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
            entry.worker.begin_drain()

    @property
    def idle(self) -> bool:
        return all(entry.batcher.idle for entry in self.entries.values())

    def stop(self, timeout: float | None = None) -> None:
        for entry in self.entries.values():
            entry.worker.stop(timeout)

    # ---- live management (issue 14) ------------------------------------------------------------------

    def index(self) -> list[dict]:
        """The repository as the Open Inference Protocol lists it: every version on disk or served, with state."""
        rows: dict[tuple[str, str], dict] = {}
        for bundle_dir in discover_bundles(self.settings.models_root):
            name, version = bundle_dir.parent.name, bundle_dir.name
            if self._wanted(name, version):
                reason = "unloaded" if name in self.unloaded else self.errors.get(f"{name}/{version}", "not loaded")
                rows[(name, version)] = {"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason}
        for entry in self.all():
            state = "READY" if entry.ready else ("UNAVAILABLE" if entry.load_error else "LOADING")
            reason = entry.load_error or self.errors.get(f"{entry.name}/{entry.version}", "")
            rows[(entry.name, entry.version)] = {
                "name": entry.name,
                "version": entry.version,
                "state": state,
                "reason": reason,
            }
        return [rows[key] for key in sorted(rows, key=lambda k: (k[0], _version_key(k[1])))]

    async def load_model(self, name: str) -> list[str]:
        """Serve ``name`` as it is on disk now (the protocol's ``load``); the versions that serve.

        Raises :class:`ServiceError` 400 naming each refused version (the others, and any copy loaded
        before a refused one, serve on), or when no version of it is on disk.
        """
        self.unloaded.discard(name)
        problems = await self.sync(name)
        versions = self.versions(name)
        if problems or not versions:
            detail = "; ".join(problems) or f"no version of {name!r} under {self.settings.models_root}"
            raise ServiceError(400, "load_failed", f"model {name!r}: {detail} (serving versions {versions})")
        return versions

    async def unload_model(self, name: str) -> None:
        """Stop serving every version of ``name`` (the protocol's ``unload``); polling leaves it unloaded."""
        known = {n for n, _ in self.entries} | {b.parent.name for b in discover_bundles(self.settings.models_root)}
        if name not in known:
            raise ServiceError(404, "unknown_model", f"no model named {name!r}; this server has {self.names()}")
        self.unloaded.add(name)
        async with self._sync_lock:
            for key in [k for k in self.entries if k[0] == name]:
                self.retire(self.entries.pop(key), "unloaded")

    async def poll(self) -> None:
        """One pass of ``poll_models_s``: sync every model on disk or served, except those unloaded."""
        names = {b.parent.name for b in discover_bundles(self.settings.models_root)} | set(self.names())
        for name in sorted(names - self.unloaded):
            await self.sync(name)

    async def poll_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - one failed pass must not end polling
                log.exception("polling %s", self.settings.models_root)

    async def sync(self, name: str) -> list[str]:
        """Make the served versions of ``name`` follow its directories on disk; the errors of refused ones."""
        async with self._sync_lock:
            problems: list[str] = []
            on_disk = {
                b: b.name
                for b in discover_bundles(self.settings.models_root)
                if b.parent.name == name and self._wanted(name, b.name)
            }
            served = {entry.bundle_dir: entry for entry in self.entries.values() if entry.name == name}
            for bundle_dir, entry in served.items():
                if bundle_dir not in on_disk:
                    self.entries.pop((entry.name, entry.version), None)
                    self.retire(entry, "removed from disk")
            for bundle_dir in sorted(on_disk, key=lambda b: _version_key(b.name)):
                entry = served.get(bundle_dir)
                if entry is not None and files_signature(bundle_dir, entry.manifest) == entry.signature:
                    continue  # unchanged
                problem = await self._load_beside(bundle_dir, entry)
                if problem:
                    problems.append(problem)
            return problems

    async def _load_beside(self, bundle_dir: Path, serving: ModelEntry | None) -> str | None:
        """Load and warm ``bundle_dir`` beside what serves, then switch to it; or refuse it (the error)."""
        label = f"{bundle_dir.parent.name}/{bundle_dir.name}"
        try:
            manifest = load_manifest(bundle_dir, verify=False)
            signature = files_signature(bundle_dir, manifest)
        except (ArtifactError, ValueError, OSError) as exc:
            signature, manifest = None, None
            error = str(exc)
        else:
            if self._refused.get(bundle_dir) == signature:
                return self.errors.get(label)  # refused as it is now; retried once its files change again
            outcome = await asyncio.to_thread(self._prepare_and_warm, bundle_dir, serving)
            error = outcome if isinstance(outcome, str) else None
            if isinstance(outcome, ModelEntry):
                candidate = outcome
                self.entries[(candidate.name, candidate.version)] = candidate  # the switch
                self.errors.pop(label, None)
                self._refused.pop(bundle_dir, None)
                for hook in self.on_loaded:
                    hook(candidate)
                if serving is not None and serving is not candidate:
                    self.retire(serving, "replaced by a new copy")
                self.metrics.model_loads.labels(candidate.name, candidate.version, "loaded").inc()
                log.info("%s: loaded, warmed and now serving (%s)", label, "replaced" if serving else "new")
                return None
        if signature is not None:
            self._refused[bundle_dir] = signature
        kept = f"; version {serving.version} loaded earlier keeps serving" if serving is not None else ""
        self.errors[label] = f"refused: {error}{kept}"
        name, version = (manifest.name, manifest.version) if manifest else (bundle_dir.parent.name, bundle_dir.name)
        self.metrics.model_loads.labels(name, version, "refused").inc()
        log.error("%s: refused: %s%s", label, error, kept)
        return f"{label}: {error}"

    def _prepare_and_warm(self, bundle_dir: Path, serving: ModelEntry | None) -> ModelEntry | str:
        """(worker thread) Verify, build and warm a candidate entry; the entry, or why it was refused."""
        try:
            manifest = load_manifest(bundle_dir, verify=self.settings.verify_files)
            key = (manifest.name, manifest.version)
            other = self.entries.get(key)
            if other is not None and other is not serving:
                return f"its manifest says {key[0]}/{key[1]}, which {other.bundle_dir} serves already"
            detector = load_detector(manifest, bundle_dir)
        except (ArtifactError, ValueError, OSError) as exc:
            return str(exc)
        candidate = self._entry(manifest, bundle_dir, detector)
        candidate.worker.start()
        candidate.worker.wait_loaded()
        if candidate.load_error or not candidate.ready:
            candidate.worker.stop(1)
            return candidate.load_error or "the model did not become ready"
        return candidate

    def retire(self, entry: ModelEntry, why: str) -> None:
        """Take ``entry`` out of service (already out of the table): its queued work finishes, then it stops."""
        log.info("%s/%s: retired (%s); stops once its queue is empty", entry.name, entry.version, why)
        self.metrics.model_loads.labels(entry.name, entry.version, "unloaded").inc()

        def stop_when_idle():
            end = time.monotonic() + self.settings.request_timeout_s
            idle_since = None
            while time.monotonic() < end:
                if entry.batcher.idle:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= RETIRE_SETTLE_S:
                        break
                else:
                    idle_since = None
                time.sleep(0.05)
            entry.worker.stop(self.settings.drain_timeout_s)

        threading.Thread(target=stop_when_idle, name=f"retire-{entry.name}-{entry.version}", daemon=True).start()
