"""``python -m training.general_images OUT.npz``: a broad mix of images for a general-domain background flow.

The likelihood ratio of Schirrmeister et al. (2020) compares the in-distribution
flow with a flow of *images in general*: both learn the local pixel statistics that
make a flow's likelihood generalise (Kirichenko et al. 2020), so their difference
keeps what only the in-distribution model learned. The general model must be broad
and must never have seen the sets it is judged on, so this mix takes every source
on a Debian machine that no **heldout** or **final** colour OOD set
(:mod:`training.colour_sets`) comes from: the tune groups' sources (icon themes, the
tune half of Noto's emoji, the tune photos, at other crops), the icon themes the OOD
sets leave out (Tango, MATE, Menta, Faba, Adwaita), game art (Frozen Bubble, Pingus,
Freeciv flags) and line art (DejaVu's pictographs on the tune half of the codepoints,
the Glyphicons and Material Design icon fonts), half of it light on dark.
:func:`check_no_heldout_source` refuses a mix that shares a source with an unseen set.

Every image is prepared like the clip art (:mod:`training.square_on_white`) at the
asked size; ``--channels 1`` turns the mix gray (ITU-R 601 luma, Pillow's ``L``),
for gray models. The clip art itself is never in the mix: the general model is what
a user's build gets before it has seen their images.

Writes ``OUT.npz`` (``images`` uint8 ``[N,C,S,S]``, ``sources``: the file or crop of
each image, ``groups``: the source name of each image) for ``oodgate-background
train`` (any config with ``source: npz``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.colour_sets import TUNE, UNSEEN, default_sets, set_rng
from training.image_sources import (
    ICONS,
    BothPolarities,
    EmojiGlyphs,
    FontGlyphs,
    IconFiles,
    PhotoCrops,
    Source,
)

MIN_IMAGES = 2000  # fewer, and the background flow would learn those images, not images in general
PER_SOURCE = 2500  # at most this many images from one source, so no theme dominates the mix
GAMES = Path("/usr/share/games")
FONTS = Path("/usr/share/fonts/truetype")
GLYPH_PX = 109  # the emoji sets' render size
LINE_ART_HALF = 0  # the tune half of the codepoints (training.image_sources.emoji_half): no held-out glyph


@dataclass(frozen=True)
class GeneralSource:
    name: str
    source: Source
    n: int = PER_SOURCE


def extra_sources() -> list[GeneralSource]:
    """Sources that are in no colour OOD set at all."""
    return [
        GeneralSource("icons-tango", IconFiles((ICONS / "Tango",), "tango-icon-theme")),
        GeneralSource("icons-mate", IconFiles((ICONS / "mate", ICONS / "menta"), "mate-icon-theme")),
        GeneralSource("icons-faba", IconFiles((ICONS / "Faba",), "faba-icon-theme")),
        GeneralSource("icons-adwaita", IconFiles((ICONS / "Adwaita",), "adwaita-icon-theme")),
        GeneralSource(
            "games-frozen-bubble",
            IconFiles((GAMES / "frozen-bubble" / "gfx",), "frozen-bubble-data", largest_per_name=False),
        ),
        GeneralSource("games-pingus", IconFiles((GAMES / "pingus" / "data",), "pingus-data", largest_per_name=False)),
        GeneralSource(
            "flags-freeciv", IconFiles((GAMES / "freeciv" / "flags",), "freeciv-data", largest_per_name=False)
        ),
        *line_art_sources(),
    ]


def line_art_sources() -> list[GeneralSource]:
    """Monochrome pictographs, half of them light on dark: the line art the icon themes lack.

    Without them a general model has seen almost no outline drawing, so it finds
    line art unlikely and the ratio calls any line art in-distribution.
    """
    return [
        GeneralSource(
            "lineart-dejavu",
            BothPolarities(
                EmojiGlyphs(FONTS / "dejavu" / "DejaVuSans.ttf", "fonts-dejavu-core", GLYPH_PX, LINE_ART_HALF, False)
            ),
        ),
        GeneralSource(
            "lineart-glyphicons",
            BothPolarities(
                FontGlyphs(FONTS / "glyphicons" / "glyphicons-halflings-regular.ttf", "fonts-glyphicons-halflings")
            ),
        ),
        GeneralSource(
            "lineart-materialdesign",
            BothPolarities(
                FontGlyphs(
                    FONTS / "materialdesignicons-webfont" / "materialdesignicons-webfont.ttf",
                    "fonts-materialdesignicons-webfont",
                )
            ),
        ),
    ]


def tune_sources() -> list[GeneralSource]:
    """The tune colour OOD sets' sources (drawn again with another seed: other crops, another order)."""
    out = []
    for spec in default_sets():
        if spec.group == TUNE and isinstance(spec.source, (IconFiles, EmojiGlyphs, PhotoCrops)):
            out.append(GeneralSource(f"{spec.name}-source", spec.source))
    return out


def check_no_heldout_source(mix: list[GeneralSource]) -> None:
    """Refuse a mix that shares an icon folder, font, photo file or emoji codepoint with an unseen OOD set."""
    held = [  # each unseen set's origins read once (a font's codepoints mean opening the font)
        (spec.name, spec.source.origins())
        for spec in default_sets()
        if spec.group in UNSEEN and not spec.source.missing()
    ]
    for part in mix:
        if part.source.missing():  # not on this machine: it cannot be built, nor share anything
            continue
        origins = part.source.origins()
        for name, theirs in held:
            shared = {o for o in origins for t in theirs if o == t or o.startswith(t + "/") or t.startswith(o + "/")}
            if shared:
                raise ValueError(f"{part.name} shares {sorted(shared)[:3]} with held-out set {name}")


def to_gray(images: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, rounded like Pillow's ``convert("L")``: ``[N,3,S,S]`` -> ``[N,1,S,S]``."""
    r, g, b = (images[:, i].astype(np.int32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, None]


def mix_sources() -> list[GeneralSource]:
    return tune_sources() + extra_sources()


def build_mix(
    size: int, channels: int, seed: int, per_source: int = PER_SOURCE, log=print
) -> tuple[np.ndarray, list, list]:
    """The mix from every source installed here; a missing source is named and skipped.

    Fewer than ``MIN_IMAGES`` images in all is a RuntimeError naming what to install:
    a background flow of a few hundred images would model them, not images in general.
    """
    mix = mix_sources()
    check_no_heldout_source(mix)
    images, sources, groups, missing = [], [], [], []
    for part in mix:
        gone = part.source.missing()
        if gone:
            missing += gone
            log(f"{part.name}: skipped ({'; '.join(gone)})", flush=True)
            continue
        built, names = part.source.build(size, min(part.n, per_source), set_rng(seed, "general/" + part.name))
        log(f"{part.name}: {len(built)} images", flush=True)
        images.append(built)
        sources += names
        groups += [part.name] * len(built)
    total = sum(len(part) for part in images)
    if total < MIN_IMAGES:
        raise RuntimeError(
            f"{total} general-domain images on this machine, fewer than {MIN_IMAGES}; install:\n  "
            + "\n  ".join(missing)
        )
    stacked = np.concatenate(images)
    if channels == 1:
        stacked = to_gray(stacked)
    return np.ascontiguousarray(stacked), sources, groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.general_images", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .npz to write")
    parser.add_argument("--size", type=int, default=32, help="side of the square images")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-source", type=int, default=PER_SOURCE, help="at most this many images per source")
    args = parser.parse_args(argv)
    try:
        images, sources, groups = build_mix(args.size, args.channels, args.seed, args.per_source)
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, images=images, sources=np.array(sources), groups=np.array(groups))
    print(f"wrote {args.out}: {len(images)} images {images.shape[1:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
