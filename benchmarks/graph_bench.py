"""``python -m benchmarks.graph_bench BUNDLE...``: images/s of each bundle's ONNX graph alone (one flow pass).

The ceiling of what a bundle's flow costs on this machine, before HTTP, batching,
scores or p-values: the figure the model cards quote per flow pass. Random uint8
images of the bundle's input shape, ONNX Runtime on the CPU, best of several 2 s
windows (the machine may be shared: the best window is the least disturbed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.harness import best_rate
from service.artifact import INPUT_NAME, ONNX_FILE, load_manifest


def graph_images_per_second(bundle: Path, batch: int, threads: int, windows: int, seconds: float) -> float:
    manifest = load_manifest(bundle, verify=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(bundle / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (batch, *manifest.input.shape), dtype=np.uint8)
    for _ in range(2):
        session.run(None, {INPUT_NAME: images})
    return best_rate(lambda: session.run(None, {INPUT_NAME: images}), batch, windows, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    for bundle in args.bundles:
        rate = graph_images_per_second(bundle, args.batch, args.threads, args.windows, args.seconds)
        print(f"{bundle}: {rate:.0f} images/s (one flow pass, batch {args.batch}, {args.threads} threads)")


if __name__ == "__main__":
    main()
