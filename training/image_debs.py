"""``python -m training.image_debs``: the Debian packages the colour OOD sets and the general mix read.

One list, derived from the sources themselves (each answers ``debs()``), so the
Makefile's ``colour-data`` target installs exactly what
:mod:`training.colour_sets` and :mod:`training.general_images` will look for.
Photos from the scikit-image and scikit-learn wheels come with the ``eval`` extra.
"""

from __future__ import annotations

import sys

from training.colour_sets import default_sets
from training.general_images import mix_sources


def image_debs() -> list[str]:
    packages: set[str] = set()
    for spec in default_sets():
        packages |= spec.source.debs()
    for part in mix_sources():
        packages |= part.source.debs()
    return sorted(packages)


def main() -> int:
    print(" ".join(image_debs()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
