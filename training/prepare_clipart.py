"""``python -m training.prepare_clipart OUT_DIR``: the colour bundle's data, cut exactly as documented.

Debian's ``openclipart-png`` (``apt-get install -y openclipart-png``) is the
in-distribution data of ``models/clipart-glow/1``. The preparation is fixed so that
anyone can cut the same split and check its sha256 against the manifest:

- every ``*.png`` under ``/usr/share/openclipart``, sorted by its path relative to it;
- RGBA (and palette transparency) composited on white, padded to a square with white
  (the drawing centred), resized to 32x32 with Pillow's LANCZOS, as RGB;
- the images whose index in that sorted list is a multiple of 10 are the **test split**
  (never trained on, never calibrated on); the others are the training split, from
  whose end ``oodgate-build`` cuts its validation and holdout slices.

Writes ``OUT_DIR/train.npz`` and ``OUT_DIR/test.npz`` (``images``: uint8 [N,3,32,32],
``paths``: the relative paths, so a reader can see which file is which).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from training.square_on_white import prepare_file

CLIPART_ROOT = Path("/usr/share/openclipart")
CLIPART_DEB = "openclipart-png"  # the Debian package the clip art comes from
CLIPART_HINT = f"install it with: sudo apt-get install -y {CLIPART_DEB}"
SIZE = 32
TEST_EVERY = 10  # index % TEST_EVERY == 0 -> test split


def clipart_files(root: Path = CLIPART_ROOT) -> list[Path]:
    """Every PNG under ``root``, sorted by the path relative to it (the order the split is defined on)."""
    return sorted(root.rglob("*.png"), key=lambda p: p.relative_to(root).as_posix())


def prepare_image(path: str | Path, size: int = SIZE) -> np.ndarray:
    """One clip-art PNG as uint8 [3, size, size]: on white, padded square, LANCZOS.

    The preparation lives in :mod:`training.square_on_white` so that the colour OOD
    sets (``training.colour_sets``) go through the very same code as the data.
    """
    return prepare_file(path, size)


def split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions in the sorted list: test = every ``TEST_EVERY``-th, starting at 0."""
    index = np.arange(n)
    test = index % TEST_EVERY == 0
    return index[~test], index[test]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.prepare_clipart", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="writes train.npz and test.npz here")
    parser.add_argument("--root", type=Path, default=CLIPART_ROOT, help="the openclipart folder")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding PNGs (1 on a shared machine)")
    args = parser.parse_args(argv)

    files = clipart_files(args.root)
    if not files:
        print(f"no PNG files under {args.root}; {CLIPART_HINT}", file=sys.stderr)
        return 2
    print(f"preparing {len(files)} PNGs from {args.root} at {SIZE}x{SIZE} RGB", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        images = np.stack(list(pool.map(prepare_image, files, chunksize=64)))
    relative = np.array([f.relative_to(args.root).as_posix() for f in files])
    train, test = split_indices(len(files))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, index in (("train", train), ("test", test)):
        path = args.out_dir / f"{name}.npz"
        np.savez(path, images=images[index], paths=relative[index])
        print(f"{path}: {len(index)} images", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
