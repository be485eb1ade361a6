"""``python -m training.complexity_baseline SETS_DIR``: how far PNG size alone, with no flow, separates each set.

A flow-based score is only worth its cost where it beats the input complexity on its
own (Serrà et al. 2020 use it as the correction, not the detector). This prints, for
every set of a ``training.colour_sets`` index, the AUROC of ``L(x)``
(:func:`service.complexity.complexity_bits`, the service's own number) against the
in-distribution test split, in both readings a gate without a flow could use:

- ``AUROC (more bits)``: an image that needs more bits than clip art is flagged;
- ``AUROC (|bits - median|)``: an image far from the test split's median, either
  way, is flagged (the median is taken on that same test split: a no-flow baseline,
  not a calibrated gate).

Output is a Markdown table for ``docs/colour-ood-sets.md``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.complexity import complexity_bits
from training.colour_sets import CLIPART_TEST, INDEX_NAME, read_index
from training.metrics import auroc, fpr_at_tpr


@dataclass(frozen=True)
class BaselineRow:
    name: str
    kind: str
    group: str
    count: int
    bits_per_dim: float  # the set's median L(x) / D
    auroc_more_bits: float
    auroc_two_sided: float
    fpr95_more_bits: float


def baseline_rows(sets_dir: Path, in_dist: np.ndarray) -> tuple[float, list[BaselineRow]]:
    """(the test split's median bits/dim, one row per set of the index)."""
    dims = float(np.prod(in_dist.shape[1:]))
    in_bits = complexity_bits(in_dist)
    centre = float(np.median(in_bits))
    rows = []
    for entry in read_index(sets_dir):
        with np.load(sets_dir / entry.file) as data:
            bits = complexity_bits(data["images"])
        rows.append(
            BaselineRow(
                entry.name,
                entry.kind,
                entry.group,
                len(bits),
                float(np.median(bits)) / dims,
                auroc(in_bits, bits),
                auroc(np.abs(in_bits - centre), np.abs(bits - centre)),
                fpr_at_tpr(in_bits, bits),
            )
        )
    return centre / dims, rows


def markdown(in_bpd: float, n_in: int, rows: list[BaselineRow]) -> str:
    lines = [
        f"In-distribution: clip-art test split, {n_in} images, median PNG size {in_bpd:.3f} bits/dim.",
        "",
        "| set | kind | group | n | median bits/dim | AUROC (more bits) | AUROC (\\|bits - median\\|) "
        "| FPR95 (more bits) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.kind} | {r.group} | {r.count} | {r.bits_per_dim:.3f} | {r.auroc_more_bits:.3f} | "
            f"{r.auroc_two_sided:.3f} | {r.fpr95_more_bits:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.complexity_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("sets_dir", type=Path, help="a folder written by python -m training.colour_sets")
    parser.add_argument("--in-dist", type=Path, default=CLIPART_TEST, help="the in-distribution test split (.npz)")
    args = parser.parse_args(argv)
    for needed in (args.sets_dir / INDEX_NAME, args.in_dist):
        if not needed.is_file():
            print(
                f"{needed} not found (python -m training.colour_sets / python -m training.prepare_clipart)",
                file=sys.stderr,
            )
            return 2
    with np.load(args.in_dist) as data:
        in_dist = data["images"]
    in_bpd, rows = baseline_rows(args.sets_dir, in_dist)
    print(markdown(in_bpd, len(in_dist), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
