"""Per-batch cost of the worker's postprocess (:mod:`service.postprocess`) on the default bundle.

After each graph call the model's worker computes the PNG complexity of the
batch, every score and every score's conformal p-value; the model waits
meanwhile, so this is a per-batch overhead on top of inference. Prints
microseconds per call for batches of 1, 8 and 32 real-shaped images.

    .venv/bin/python -m benchmarks.postprocess_bench [BUNDLE]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from service.artifact import load_manifest
from service.calibration_file import load_detector
from service.postprocess import make_postprocess
from service.runtimes import load_runtime


def per_call_us(fn, calls: int) -> float:
    fn()  # first call outside the clock
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str]) -> int:
    bundle = Path(argv[0]) if argv else Path("models/fashion-glow/1")
    manifest = load_manifest(bundle)
    detector = load_detector(manifest, bundle)
    postprocess = make_postprocess(detector)
    runtime = load_runtime(manifest, bundle, "onnx", "cpu")  # orientation as the manifest says
    images = np.random.default_rng(0).integers(0, 256, (32, *manifest.input.shape), dtype=np.uint8)
    stats = runtime.run(images)
    for n in (1, 8, 32):
        subset, pixels = {k: v[:n] for k, v in stats.items()}, images[:n]
        us = min(per_call_us(lambda subset=subset, pixels=pixels: postprocess(subset, pixels), 300) for _ in range(3))
        print(f"postprocess({n:2d} images): {us:7.1f} us per batch (best of 3 x 300), scores {detector.score_names}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
