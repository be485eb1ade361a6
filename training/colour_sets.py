"""``python -m training.colour_sets OUT_DIR``: the colour OOD sets of ``models/clipart-glow/1``.

A gate tuned on the sets it is judged on proves nothing, and the project is judged on
sets nobody here has seen. So every kind of OOD set comes in two groups drawn from
*different sources*: ``tune`` (look at it as often as you like) and ``heldout`` (a
check nobody tunes on), then ``final``. No icon theme, font, photo file or emoji
codepoint is in two groups; :func:`check_groups_disjoint` refuses a list of sets
where one is.

Every set is prepared exactly like the clip art (:mod:`training.square_on_white`:
composited on white, padded square with white, LANCZOS), so a gate cannot win on
preprocessing artefacts. Each set holds at most ``--n`` images (fewer where the
source has fewer), drawn deterministically from ``--seed``; exact duplicates after
preparation are dropped.

Sets (name, kind, group, source package): :func:`default_sets`, and each set's
description, count and sha256 in ``docs/colour-ood-sets.md``. Kinds: other colour icon
themes, emoji, cartoons of another style (near); natural photo crops and grayscale
photos repeated to RGB (far); the clip-art test split inverted and upside down
(``transform``). A third group, ``final`` (:func:`final_sets`), was added after the
``heldout`` results had been read and had shaped the general mix
(:mod:`training.general_images`), so it is the check nobody has tuned on.

A missing package is a clear error naming it, before any set is built.

Writes ``OUT_DIR/<name>.npz`` (``images`` uint8 [N,3,H,W], ``sources``: the file,
glyph or crop each image came from) and ``OUT_DIR/sets.json``, the index: per set its
name, kind, group, description, source package, count and the sha256 of the
C-ordered ``images`` bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.image_sources import (
    ICONS,
    SVG_RENDERER_DEB,
    ClipartTransform,
    EmojiGlyphs,
    FontGlyphs,
    IconFiles,
    MissingSource,
    PhotoCrops,
    Source,
    pip_hint,
    python_data_dir,
)
from training.prepare_clipart import CLIPART_DEB

SIZE = 32
MAX_IMAGES = 1000
SEED = 0
INDEX_NAME = "sets.json"
TUNE, HELDOUT, TRANSFORM = "tune", "heldout", "transform"
FINAL = "final"  # built after the heldout group had been looked at: the check nobody has seen yet
UNSEEN = (HELDOUT, FINAL)  # the groups no choice may be fitted on
NEAR, FAR = "near", "far"

NOTO_EMOJI = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_STRIKE_PX = 109  # the only bitmap size the CBDT font carries
SYMBOLA = Path("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf")
SYMBOLA_PX = 109
SUPERTUX_IMAGES = Path("/usr/share/games/supertux2/images")
FONT_AWESOME = Path("/usr/share/fonts/truetype/font-awesome/fontawesome-webfont.ttf")
EMOJIFY_IMAGES = Path("/usr/share/javascript/emojify.js/images/emoji")
TUXMATH_IMAGES = Path("/usr/share/tuxmath/images")
TUXTYPE_IMAGES = Path("/usr/share/tuxtype/images")
MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")
CLIPART_TEST = Path("data/clipart32/test.npz")
PIP_MODULES = {"scikit-image": "skimage", "scikit-learn": "sklearn"}  # package -> import name


# ---------------------------------------------------------------------- sets


@dataclass(frozen=True)
class SetSpec:
    name: str
    kind: str  # NEAR | FAR | TRANSFORM
    group: str  # TUNE | HELDOUT | TRANSFORM
    description: str
    package: str
    source: Source


@dataclass(frozen=True)
class SetRecord:
    """One row of ``sets.json``."""

    name: str
    kind: str
    group: str
    description: str
    package: str
    count: int
    sha256: str
    file: str


def read_index(sets_dir: Path) -> list[SetRecord]:
    """The rows of ``sets_dir``'s index, as :func:`write_sets` wrote them: the one reader of ``sets.json``."""
    index = json.loads((Path(sets_dir) / INDEX_NAME).read_text())
    return [SetRecord(**row) for row in index["sets"]]


def images_sha256(images: np.ndarray) -> str:
    """sha256 of the C-ordered uint8 bytes of an ``images`` array (what ``sets.json`` records)."""
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes()).hexdigest()


def default_sets(clipart_test: Path = CLIPART_TEST) -> list[SetSpec]:
    """The sets this module builds, with their sources on a Debian machine."""
    skimage = python_data_dir("skimage", "data") or Path("<scikit-image not installed>")
    sklearn = python_data_dir("sklearn", "datasets", "images") or Path("<scikit-learn not installed>")

    def theme(name: str, group: str, folder: str, package: str, style: str) -> SetSpec:
        return SetSpec(
            f"icons-{name}",
            NEAR,
            group,
            f"{style}: the largest PNG of each icon name in {ICONS / folder}",
            package,
            IconFiles((ICONS / folder,), package),
        )

    def noto(group: str, half: int) -> SetSpec:
        return SetSpec(
            f"emoji-noto-{group}",
            NEAR,
            group,
            f"Noto Color Emoji bitmaps, the codepoints with emoji_half == {half}",
            "fonts-noto-color-emoji",
            EmojiGlyphs(NOTO_EMOJI, "fonts-noto-color-emoji", NOTO_STRIKE_PX, half, colour=True),
        )

    def photos(name: str, group: str, gray: bool, files: tuple[Path, ...]) -> SetSpec:
        what = "grayscale photos (gray repeated to RGB)" if gray else "colour photos"
        shipped_by = tuple("scikit-learn" if f.parent == sklearn else "scikit-image" for f in files)
        hints = tuple(pip_hint(PIP_MODULES[package], package) for package in shipped_by)
        return SetSpec(
            name,
            FAR,
            group,
            f"random square crops of {what}: {', '.join(f.stem for f in files)}",
            ", ".join(sorted(set(shipped_by))),
            PhotoCrops(files, hints),
        )

    return [
        theme("oxygen", TUNE, "oxygen", "oxygen-icon-theme", "KDE Oxygen icons (glossy, shaded)"),
        theme("gnome", TUNE, "gnome", "gnome-icon-theme", "GNOME 3 full-colour icons (Tango style)"),
        theme("moka", HELDOUT, "Moka", "moka-icon-theme", "Moka icons (flat, round)"),
        theme("faenza", HELDOUT, "Faenza", "faenza-icon-theme", "Faenza icons (gradients, reflections)"),
        noto(TUNE, 0),
        noto(HELDOUT, 1),
        SetSpec(
            "emoji-symbola-heldout",
            NEAR,
            HELDOUT,
            "Symbola's monochrome emoji outlines in black: heldout-half codepoints that Noto maps too",
            "fonts-symbola",
            EmojiGlyphs(
                SYMBOLA,
                "fonts-symbola",
                SYMBOLA_PX,
                1,
                colour=False,
                also_in=NOTO_EMOJI,
                also_in_package="fonts-noto-color-emoji",
            ),
        ),
        SetSpec(
            "cartoon-gartoon",
            NEAR,
            TUNE,
            "Gartoon cartoon-style icons (SVG rendered at 256 px), the largest of each name",
            f"gnome-icon-theme-gartoon, {SVG_RENDERER_DEB}",
            IconFiles((ICONS / "gartoon",), "gnome-icon-theme-gartoon", suffix=".svg"),
        ),
        SetSpec(
            "cartoon-supertux",
            NEAR,
            HELDOUT,
            "SuperTux game sprites: every creature and object PNG",
            "supertux-data",
            IconFiles(
                (SUPERTUX_IMAGES / "creatures", SUPERTUX_IMAGES / "objects"), "supertux-data", largest_per_name=False
            ),
        ),
        photos(
            "photos-tune",
            TUNE,
            False,
            (
                sklearn / "china.jpg",
                skimage / "astronaut.png",
                skimage / "coffee.png",
                skimage / "motorcycle_left.png",
                skimage / "motorcycle_right.png",
            ),
        ),
        photos(
            "photos-heldout", HELDOUT, False, (sklearn / "flower.jpg", skimage / "chelsea.png", skimage / "rocket.jpg")
        ),
        photos(
            "gray-photos-tune",
            TUNE,
            True,
            tuple(skimage / f for f in ("camera.png", "coins.png", "grass.png", "text.png")),
        ),
        photos(
            "gray-photos-heldout",
            HELDOUT,
            True,
            tuple(skimage / f for f in ("moon.png", "clock_motion.png", "gravel.png", "brick.png")),
        ),
        *final_sets(),
        SetSpec(
            "clipart-inverted",
            TRANSFORM,
            TRANSFORM,
            "the clip-art test split, colour-inverted (255 - x)",
            CLIPART_DEB,
            ClipartTransform(clipart_test, "inverted"),
        ),
        SetSpec(
            "clipart-upside-down",
            TRANSFORM,
            TRANSFORM,
            "the clip-art test split, flipped vertically",
            CLIPART_DEB,
            ClipartTransform(clipart_test, "upside-down"),
        ),
    ]


def final_sets() -> list[SetSpec]:
    """The ``final`` group: one set of each kind from packages no other set or the general mix uses.

    Added after the ``heldout`` group had been read (its Symbola result shaped the
    general mix's line art), so this group is the check nobody has tuned on.
    """
    photos = tuple(
        MATE_NATURE / f"{name}.jpg"
        for name in ("Aqua", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "YellowFlower")
    )
    gray = tuple(MATE_NATURE / f"{name}.jpg" for name in ("Blinds", "Dune", "RainDrops", "Storm", "TwoWings", "Wood"))
    tux = ("penguins", "sprites", "igloos", "cities", "comets", "factoroids")
    return [
        SetSpec(
            "icons-lxde-final",
            NEAR,
            FINAL,
            f"LXDE nuoveXT 2 icons (glossy, rounded): the largest PNG of each icon name in {ICONS / 'nuoveXT2'}",
            "lxde-icon-theme",
            IconFiles((ICONS / "nuoveXT2",), "lxde-icon-theme"),
        ),
        SetSpec(
            "emoji-emojify-final",
            NEAR,
            FINAL,
            "emojify.js's colour emoji images (another drawing of the emoji than Noto's)",
            "libjs-emojify",
            IconFiles((EMOJIFY_IMAGES,), "libjs-emojify", largest_per_name=False),
        ),
        SetSpec(
            "lineart-fontawesome-final",
            NEAR,
            FINAL,
            "Font Awesome's pictographs: monochrome line-art icons in black",
            "fonts-font-awesome",
            FontGlyphs(FONT_AWESOME, "fonts-font-awesome"),
        ),
        SetSpec(
            "cartoon-tux-final",
            NEAR,
            FINAL,
            f"Tux of Math Command sprites: {', '.join(tux)} under {TUXMATH_IMAGES}",
            "tuxmath-data",
            IconFiles(tuple(TUXMATH_IMAGES / part for part in tux), "tuxmath-data", largest_per_name=False),
        ),
        SetSpec(
            "photos-final",
            FAR,
            FINAL,
            f"random square crops of colour photos: {', '.join(p.stem for p in photos)} (MATE's nature backgrounds)",
            "mate-backgrounds",
            PhotoCrops(photos, deb="mate-backgrounds"),
        ),
        SetSpec(
            "gray-photos-final",
            FAR,
            FINAL,
            f"random square crops of photos made gray (repeated to RGB): {', '.join(p.stem for p in gray)}",
            "mate-backgrounds",
            PhotoCrops(gray, gray=True, deb="mate-backgrounds"),
        ),
    ]


def check_groups_disjoint(specs: list[SetSpec]) -> None:
    """Refuse sets where one source (theme, photo file, emoji codepoint) or one name is in tune and heldout."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"set names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    for spec in specs:
        allowed = (TRANSFORM,) if spec.kind == TRANSFORM else (TUNE, *UNSEEN)
        if spec.group not in allowed:
            raise ValueError(f"set {spec.name}: group {spec.group!r} is not one of {allowed} for kind {spec.kind!r}")
    seen = {
        origin: f"{spec.group} set {spec.name}"
        for spec in specs
        if spec.group == TUNE
        for origin in spec.source.origins()
    }
    for group in UNSEEN:  # heldout may not share with tune; final with tune nor heldout
        for spec in specs:
            if spec.group != group:
                continue
            shared = sorted(origin for origin in spec.source.origins() if origin in seen)
            if shared:
                raise ValueError(
                    f"{group} set {spec.name} shares {len(shared)} source(s) with {seen[shared[0]]}: {shared[:3]}"
                )
        seen.update(
            {
                origin: f"{group} set {spec.name}"
                for spec in specs
                if spec.group == group
                for origin in spec.source.origins()
            }
        )


def check_installed(specs: list[SetSpec]) -> None:
    missing = sorted({line for spec in specs for line in spec.source.missing()})
    if missing:
        raise MissingSource("missing sources for the colour OOD sets:\n  " + "\n  ".join(missing))


def set_rng(seed: int, name: str) -> np.random.Generator:
    """One generator per set, so adding or removing a set changes no other set."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def write_sets(
    out_dir: Path, specs: list[SetSpec], size: int = SIZE, n: int = MAX_IMAGES, seed: int = SEED, log=print
) -> list[SetRecord]:
    """Build every set into ``out_dir`` and write the index; returns its rows."""
    check_installed(specs)
    check_groups_disjoint(specs)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for spec in specs:
        images, sources = spec.source.build(size, n, set_rng(seed, spec.name))
        file = f"{spec.name}.npz"
        np.savez(out_dir / file, images=images, sources=np.array(sources, dtype=str))
        record = SetRecord(
            spec.name,
            spec.kind,
            spec.group,
            spec.description,
            spec.package,
            int(len(images)),
            images_sha256(images),
            file,
        )
        records.append(record)
        log(f"{spec.name:24s} {spec.kind:9s} {spec.group:9s} {len(images):5d} images")
    index = {"size": size, "max_images": n, "seed": seed, "sets": [asdict(r) for r in records]}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.colour_sets", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="writes one NAME.npz per set and sets.json here")
    parser.add_argument("--size", type=int, default=SIZE, help="side of the square images (the clip art's: 32)")
    parser.add_argument("--n", type=int, default=MAX_IMAGES, help="at most this many images per set")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--clipart-test",
        type=Path,
        default=CLIPART_TEST,
        help="the clip-art test split the transform sets are made from",
    )
    args = parser.parse_args(argv)
    if args.size < 1 or args.n < 1:
        parser.error("--size and --n must be positive")
    try:
        write_sets(
            args.out_dir,
            default_sets(args.clipart_test),
            args.size,
            args.n,
            args.seed,
            log=lambda line: print(line, file=sys.stderr),
        )
    except MissingSource as error:
        print(error, file=sys.stderr)
        return 2
    print(f"index: {args.out_dir / INDEX_NAME}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
