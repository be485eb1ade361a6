"""Runtimes: run an exported flow graph on a uint8 batch and return its named outputs.

Two backends read the same bundle: ONNX Runtime (CUDA execution provider when a
GPU is there) and TorchScript (CUDA or CPU). Both take ``images: uint8[B,C,H,W]``
and return :data:`service.artifact.OUTPUT_NAMES` as float32 numpy arrays (plus
``latent_energy_levels`` from graphs exported with it); when
the manifest lists a background graph (``background_onnx`` /
``background_torchscript``, the likelihood-ratio score's second flow) its
``bpd`` is added as ``background_bpd``. With ``orientation`` on (a calibration
that uses the ``orientation`` score, see :mod:`service.ood`) the main graph runs
once on the batch and its vertical flip together (2N images, one graph call)
and the flipped images' ``bpd`` is added as ``vflip_bpd``: every image then
costs two flow passes. ``auto`` times every backend that can
run here on a real batch and keeps the fastest: which one wins depends on the
model and the machine, so we measure instead of guessing.

A runtime is used by exactly one worker thread (see :mod:`service.batcher`);
nothing here is called on the event loop. torch is imported only when a
TorchScript runtime is built, so an ONNX-only service never loads it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .artifact import (
    BACKGROUND_KEYS,
    GRAPH_FILES,
    GRAPH_KEYS,
    GRAPH_OUTPUTS,
    INPUT_NAME,
    OUTPUT_NAMES,
    Manifest,
    bundle_file,
    has_background,
)
from .calibration_file import detector_inputs
from .scores import BACKGROUND_BPD, VFLIP_BPD

log = logging.getLogger(__name__)


class RuntimeUnavailable(RuntimeError):
    """The requested backend or device cannot run here."""


class Runtime(Protocol):
    backend: str
    device: str

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def cuda_available_onnx() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def cuda_available_torch() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but the service could run without it
        return False
    return torch.cuda.is_available()


def _threads(requested: int) -> int:
    return requested or (os.cpu_count() or 1)


class OnnxGraph:
    """One ONNX Runtime session."""

    def __init__(self, path: Path, device: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads spinning for work would steal the CPU the event loop and the decode
        # threads need between batches; on a few cores that costs more than the wake-up latency.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeUnavailable(f"ONNX Runtime could not use CUDA for {path}")
        self.names = [o.name for o in self.session.get_outputs()]
        missing = set(OUTPUT_NAMES) - set(self.names)
        if missing:
            raise RuntimeUnavailable(f"{path} lacks outputs {sorted(missing)}")

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {INPUT_NAME: images})
        return dict(zip(self.names, outputs, strict=True))


class TorchScriptGraph:
    """One TorchScript module, on CPU or CUDA."""

    def __init__(self, path: Path, device: str, threads: int) -> None:
        import torch

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if device == "cuda" else "cpu")
        self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
            outputs = self.module(batch)
        # GRAPH_OUTPUTS extends OUTPUT_NAMES: a graph exported before latent energy was added returns the prefix
        if len(outputs) not in (len(OUTPUT_NAMES), len(GRAPH_OUTPUTS)):
            raise RuntimeError(f"the TorchScript graph returned {len(outputs)} outputs, not {len(GRAPH_OUTPUTS)}")
        return {name: out.detach().to("cpu").numpy() for name, out in zip(GRAPH_OUTPUTS, outputs, strict=False)}

    def release_memory(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


GRAPHS = {"onnx": OnnxGraph, "torchscript": TorchScriptGraph}


@dataclass
class FlowRuntime:
    """The model graph plus, when the bundle has one, the background graph.

    ``orientation``: also score each image flipped vertically (``vflip_bpd``), in
    the same graph call as the images themselves.
    """

    backend: str
    device: str
    main: object
    background: object | None = None
    timings: dict[str, float] = field(default_factory=dict)
    orientation: bool = False
    warnings: list[str] = field(default_factory=list)  # backends that failed to load under 'auto' (shown in /models)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.orientation:
            n = len(images)
            both = self.main(np.concatenate([images, vflip(images)]))
            stats = {name: value[:n] for name, value in both.items()}
            stats[VFLIP_BPD] = both["bpd"][n:]
        else:
            stats = self.main(images)
        if self.background is not None:
            stats[BACKGROUND_BPD] = self.background(images)["bpd"]
        return stats

    def release_memory(self) -> None:
        """After a failed batch (e.g. CUDA out of memory) give cached memory back before retrying."""
        for graph in (self.main, self.background):
            if hasattr(graph, "release_memory"):
                graph.release_memory()

    def close(self) -> None:
        self.main = self.background = None


def vflip(images: np.ndarray) -> np.ndarray:
    """``uint8[N,C,H,W]`` upside down (the H axis reversed)."""
    return images[:, :, ::-1, :]


def manifest_orientation(manifest: Manifest) -> bool:
    """Whether the bundle's calibration uses the flipped-image pass."""
    return detector_inputs(manifest.calibration).orientation


def resolve_device(backend: str, device: str) -> str:
    if device == "cpu":
        return "cpu"
    has_cuda = cuda_available_onnx() if backend == "onnx" else cuda_available_torch()
    if device == "cuda" and not has_cuda:
        raise RuntimeUnavailable(f"{backend}: no CUDA device available")
    return "cuda" if has_cuda else "cpu"


def build_runtime(
    manifest: Manifest,
    bundle_dir: Path,
    backend: str,
    device: str,
    threads: int = 0,
    orientation: bool | None = None,
) -> FlowRuntime:
    """One backend on one device ('auto' device: CUDA when that backend can use it).

    ``orientation`` ``None``: as the bundle's calibration says; ``True``/``False``
    override it (calibration decides it before the manifest records it).
    """
    main_path = bundle_file(manifest, bundle_dir, GRAPH_KEYS[backend], GRAPH_FILES[backend])
    if main_path is None or not main_path.exists():
        raise RuntimeUnavailable(f"{bundle_dir} has no {backend} graph")
    resolved = resolve_device(backend, device)
    graph_cls = GRAPHS[backend]
    background = None
    bg_path = bundle_file(manifest, bundle_dir, BACKGROUND_KEYS[backend], None)
    if bg_path is None and has_background(manifest):
        raise RuntimeUnavailable(f"{bundle_dir}: the background graph has no {backend} file")
    if bg_path is not None:
        background = graph_cls(bg_path, resolved, threads)
    return FlowRuntime(
        backend=backend,
        device=resolved,
        main=graph_cls(main_path, resolved, threads),
        background=background,
        orientation=manifest_orientation(manifest) if orientation is None else bool(orientation),
    )


def _time_runtime(runtime: FlowRuntime, batch: np.ndarray, repeats: int = 3, budget_s: float = 1.0) -> float:
    """Best of up to ``repeats`` timed runs, stopping once ``budget_s`` is spent (a slow backend loses anyway)."""
    runtime.run(batch)  # first call pays one-off costs (allocation, kernel selection)
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.run(batch)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent >= budget_s:
            break
    return best


def load_runtime(
    manifest: Manifest,
    bundle_dir: Path,
    backend: str = "auto",
    device: str = "auto",
    threads: int = 0,
    probe_batch: int = 8,
    orientation: bool | None = None,
) -> FlowRuntime:
    """Build the requested backend; for ``auto`` build every one that works and keep the fastest."""
    if backend != "auto":
        return build_runtime(manifest, bundle_dir, backend, device, threads, orientation)
    candidates: list[FlowRuntime] = []
    errors = []
    for name in ("onnx", "torchscript"):
        try:
            candidates.append(build_runtime(manifest, bundle_dir, name, device, threads, orientation))
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load simply does not compete
            errors.append(f"{name}: {exc}")
    if not candidates:
        raise RuntimeUnavailable(f"no runtime can run {bundle_dir}: {'; '.join(errors)}")
    if errors:  # a fallback, not a choice: it may be far slower, and a broken file is worth knowing about
        log.warning("%s/%s: runtime auto fell back: %s", manifest.name, manifest.version, "; ".join(errors))
        for runtime in candidates:
            runtime.warnings = [f"{e} (fell back)" for e in errors]
    if len(candidates) == 1:
        return candidates[0]
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(probe_batch, *manifest.input.shape), dtype=np.uint8)
    timings = {f"{rt.backend}/{rt.device}": _time_runtime(rt, batch) for rt in candidates}
    best = min(candidates, key=lambda rt: timings[f"{rt.backend}/{rt.device}"])
    for rt in candidates:
        if rt is not best:
            rt.close()
    best.timings = {k: round(v, 6) for k, v in timings.items()}
    log.info(
        "%s/%s: runtime auto chose %s/%s (batch of %d: %s)",
        manifest.name,
        manifest.version,
        best.backend,
        best.device,
        probe_batch,
        best.timings,
    )
    return best
