"""``python -m training.compare_backgrounds LABEL=BUNDLE ...``: which calibrated bundle the domain-free rule prefers.

Two general-domain mixes (or a background and none) are compared the way a build
keeps or drops a background (:func:`training.build_background.rank_calibrations`):
on the domain-free synthetic sets and the in-distribution test set only, never on
an OOD set the bundle is judged on. Each bundle must be calibrated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.build_background import domain_free_options, rank_results


def parse_candidate(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=BUNDLE, got {text!r}")
    return label, Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.compare_backgrounds", description=__doc__.split("\n")[0])
    parser.add_argument("candidates", nargs="+", type=parse_candidate, help="LABEL=BUNDLE, two or more")
    parser.add_argument("--in-dist", help="in-distribution test images (default: each bundle's recorded test set)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    labels = [label for label, _ in args.candidates]
    if len(args.candidates) < 2 or len(set(labels)) != len(labels):
        parser.error("give two or more candidates with distinct labels")
    from training.evaluate import evaluate

    options = domain_free_options(args.in_dist, args.threads, progress=False)
    results = {label: evaluate(path, options) for label, path in args.candidates}
    for label, result in results.items():
        alone = rank_results({label: result}, options.sets)
        print(f"{label}: {alone.why}")
    ranked = rank_results(results, options.sets)
    print(f"preferred: {ranked.label} ({ranked.why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
