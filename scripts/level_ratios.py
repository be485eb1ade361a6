"""Per-level likelihood ratios of a bundle with a background flow: is one scale the better test?

Schirrmeister et al. (2020) and Havtorn et al. (2021) locate the domain evidence in
some levels of a multi-scale model rather than in all of them. Both graphs export
``log_pz_levels`` and ``log_det_levels`` (level 0 the finest), so the ratio can be
taken per level, ``-(log p_level(x) - log p_general_level(x))``, with no new export.
This prints the AUROC of each level's ratio and of level sums against the
in-distribution test images, on the OOD sets named (use tune sets: this is how a
score would be chosen), plus the test images inverted and flipped upside down.

    .venv/bin/python -m scripts.level_ratios models/clipart-glow/1 data/clipart32/test.npz \\
        data/colour-ood/icons-oxygen.npz data/colour-ood/emoji-noto-tune.npz ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from service.artifact import BACKGROUND_ONNX_KEY, LEVEL_OUTPUTS, ONNX_KEY, load_manifest
from service.runtimes import OnnxGraph, vflip
from training.data import load_npz
from training.metrics import auroc
from training.scoring import BATCH_SIZE


def level_log_p(graph: OnnxGraph, images: np.ndarray) -> np.ndarray:
    """``[N, levels]``: each level's share of log p(x) (its latent's log-density plus its log-det)."""
    parts = []
    for start in range(0, len(images), BATCH_SIZE):
        outputs = graph(np.ascontiguousarray(images[start : start + BATCH_SIZE]))
        parts.append(sum(outputs[name] for name in LEVEL_OUTPUTS))  # log p(z) + log-det, per level
    return np.concatenate(parts)


def level_scores(model: np.ndarray, general: np.ndarray) -> dict[str, np.ndarray]:
    ratio = general - model  # per level; higher = more OOD
    levels = ratio.shape[1]
    out = {"all levels": ratio.sum(1)}
    out.update({f"level {k}": ratio[:, k] for k in range(levels)})
    out.update({f"levels >= {k}": ratio[:, k:].sum(1) for k in range(1, levels - 1)})  # the last is "level L-1"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.level_ratios", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("in_dist", type=Path, help=".npz of in-distribution test images (key images)")
    parser.add_argument("ood", type=Path, nargs="+", help=".npz OOD sets (key images)")
    args = parser.parse_args(argv)
    manifest = load_manifest(args.bundle, verify=True)
    if BACKGROUND_ONNX_KEY not in manifest.files:
        parser.error(f"{args.bundle} has no background flow")
    sessions = [OnnxGraph(args.bundle / manifest.files[key].path, "cpu", 1) for key in (ONNX_KEY, BACKGROUND_ONNX_KEY)]
    inside = load_npz(args.in_dist)
    sets = {path.stem: load_npz(path) for path in args.ood}
    sets["inverted"], sets["upside-down"] = 255 - inside, vflip(inside)
    reference = level_scores(*(level_log_p(s, inside) for s in sessions))
    print("| set | " + " | ".join(reference) + " |")
    print("|---|" + "---:|" * len(reference))
    for name, images in sets.items():
        scores = level_scores(*(level_log_p(s, images) for s in sessions))
        cells = [f"{auroc(reference[k], scores[k]):.3f}" for k in reference]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
