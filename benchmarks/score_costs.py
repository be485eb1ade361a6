"""``python -m benchmarks.score_costs BUNDLE...``: what each OOD score costs, in images/s on this machine.

A score is as dear as the flow passes it needs: ``bpd`` and ``typicality`` one;
``complexity`` one plus the PNG size of the image; ``orientation`` two (the image
and its vertical flip, in one graph call); ``likelihood_ratio`` two (the model and
its background flow); ``dose`` and ``combined`` what their parts need. This runs
the service's own runtime (:func:`service.runtimes.build_runtime`, ONNX Runtime on
the CPU) in each of those configurations, and the PNG complexity and the
detector's arithmetic on their own, on random uint8 images of the bundle's shape,
batch 64; best of several windows (the machine may be shared). Run it from the repository root.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.harness import best_rate
from service.artifact import load_manifest
from service.complexity import complexity_bits
from service.runtimes import build_runtime

PASSES = {  # configuration -> (orientation pass, background graph)
    "1 pass (bpd, typicality)": (False, False),
    "2 passes: image + vertical flip (orientation)": (True, False),
    "2 passes: model + background (likelihood_ratio)": (False, True),
    "3 passes: image + flip + background": (True, True),
}


def costs(bundle: Path, batch: int, threads: int, windows: int, seconds: float) -> list[tuple[str, float]]:
    manifest = load_manifest(bundle, verify=True)
    images = np.random.default_rng(0).integers(0, 256, (batch, *manifest.input.shape), dtype=np.uint8)
    rows = []
    for label, (orientation, background) in PASSES.items():
        runtime = build_runtime(manifest, bundle, "onnx", "cpu", threads, orientation)
        if background and runtime.background is None:
            continue
        if not background:
            runtime.background = None
        rows.append((label, best_rate(lambda r=runtime: r.run(images), batch, windows, seconds)))
    rows.append(("PNG complexity L(x) alone", best_rate(lambda: complexity_bits(images), batch, windows, seconds)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    for bundle in args.bundles:
        print(f"\n{bundle} (batch {args.batch}, {args.threads} ONNX Runtime threads)\n")
        print("| what runs | images/s |\n|---|---:|")
        for label, rate in costs(bundle, args.batch, args.threads, args.windows, args.seconds):
            print(f"| {label} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
