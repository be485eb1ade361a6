"""Per-call cost of the OOD decision (``Detector.decide``) on the default bundle.

The service decides once per request, so for single-image requests this cost is
paid per image, on top of the model. Prints microseconds per call for 1 and 32
images (real FashionMNIST-shaped inputs scored by the bundle's ONNX graph).

    .venv/bin/python benchmarks/decide_bench.py [BUNDLE]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from service.artifact import load_manifest
from service.complexity import complexity_bits
from service.ood import Detector
from service.runtimes import build_runtime


def per_call_us(fn, calls: int) -> float:
    fn()  # first call outside the clock
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str]) -> int:
    bundle = Path(argv[0]) if argv else Path("models/fashion-glow/1")
    manifest = load_manifest(bundle)
    detector = Detector.from_bundle(manifest, bundle)
    runtime = build_runtime(manifest, bundle, "onnx", "cpu")
    images = np.random.default_rng(0).integers(0, 256, (32, *manifest.input.shape), dtype=np.uint8)
    stats, complexity = runtime.run(images), complexity_bits(images)
    for n in (1, 32):
        subset = {k: v[:n] for k, v in stats.items()}
        cx = complexity[:n]

        def decide(subset=subset, cx=cx):
            return detector.decide(subset, cx, None, None)

        us = min(per_call_us(decide, 300) for _ in range(3))
        print(f"decide({n:2d} images): {us:7.1f} us per call (best of 3 x 300), score {detector.default_score}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
