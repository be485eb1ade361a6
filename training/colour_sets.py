"""``python -m training.colour_sets OUT_DIR``: the colour OOD sets of ``models/clipart-glow/1``.

A gate tuned on the sets it is judged on proves nothing, and the project is judged on
sets nobody here has seen. So every kind of OOD set comes in two groups drawn from
*different sources*: ``tune`` (look at it as often as you like) and ``heldout`` (a
final check nobody tunes on). No icon theme, photo file or emoji codepoint is in
both groups; :func:`check_groups_disjoint` refuses a list of sets where one is.

Every set is prepared exactly like the clip art (:mod:`training.square_on_white`:
composited on white, padded square with white, LANCZOS), so a gate cannot win on
preprocessing artefacts. Each set holds at most ``--n`` images (fewer where the
source has fewer), drawn deterministically from ``--seed``; exact duplicates after
preparation are dropped.

Sets (name, kind, group: source):

- near-OOD, other colour icon themes (the largest raster of each icon name; names
  ending ``-symbolic`` skipped): ``icons-oxygen`` tune (oxygen-icon-theme),
  ``icons-gnome`` tune (gnome-icon-theme), ``icons-moka`` heldout (moka-icon-theme),
  ``icons-faenza`` heldout (faenza-icon-theme). The Tango-family themes
  (tango-icon-theme, mate-icon-theme, Adwaita's legacy icons) are left out: they
  redraw gnome's icons, so they would put one drawing in both groups.
- near-OOD, emoji: ``emoji-noto-tune`` and ``emoji-noto-heldout`` (fonts-noto-color-emoji,
  the CBDT bitmaps at 109 px), the font's single codepoints of Unicode category "So"
  split in two halves by :func:`emoji_half`; ``emoji-symbola-heldout``
  (fonts-symbola, monochrome outlines in black) on the heldout half only. Each glyph
  is rendered on transparency and cropped to its ink before preparation.
- near-OOD, cartoons of another style: ``cartoon-gartoon`` tune
  (gnome-icon-theme-gartoon, SVG rendered at 256 px by ``rsvg-convert`` from
  librsvg2-bin), ``cartoon-supertux`` heldout (supertux-data: the creature and object
  sprites).
- far-OOD, natural photo crops: random square crops (side between 1/8 and 1/2 of
  the photo's short side) of the photos bundled in scikit-learn and scikit-image
  (PyPI, the ``eval`` extra; no downloads): ``photos-tune`` (china, astronaut, coffee,
  motorcycle_left, motorcycle_right), ``photos-heldout`` (flower, chelsea, rocket).
- far-OOD, grayscale photos upscaled to RGB (gray repeated to 3 channels), crops the
  same way: ``gray-photos-tune`` (camera, coins, grass, text), ``gray-photos-heldout``
  (moon, clock_motion, gravel, brick).
- transforms of the clip-art **test split** (``python -m training.prepare_clipart
  data/clipart32`` writes it): ``clipart-inverted`` (255 - x) and
  ``clipart-upside-down`` (vertical flip); group ``transform``.

Install the sources with ``apt-get install -y oxygen-icon-theme gnome-icon-theme
moka-icon-theme faenza-icon-theme fonts-noto-color-emoji fonts-symbola
gnome-icon-theme-gartoon librsvg2-bin supertux-data`` and ``pip install -e .[eval]``.
A missing one is a clear error naming it, before any set is built.

Writes ``OUT_DIR/<name>.npz`` (``images`` uint8 [N,3,H,W], ``sources``: the file,
glyph or crop each image came from) and ``OUT_DIR/sets.json``, the index: per set its
name, kind, group, description, source package, count and the sha256 of the
C-ordered ``images`` bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from training.square_on_white import open_trusted, prepare_file, square_on_white

SIZE = 32
MAX_IMAGES = 1000
SEED = 0
INDEX_NAME = "sets.json"
TUNE, HELDOUT, TRANSFORM = "tune", "heldout", "transform"
NEAR, FAR = "near", "far"

ICONS = Path("/usr/share/icons")
NOTO_EMOJI = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_STRIKE_PX = 109  # the only bitmap size the CBDT font carries
SYMBOLA = Path("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf")
SYMBOLA_PX = 109
SUPERTUX_IMAGES = Path("/usr/share/games/supertux2/images")
CLIPART_TEST = Path("data/clipart32/test.npz")
SVG_RENDER_PX = 256
SVG_RENDERER = "rsvg-convert"
EMOJI_CATEGORY = "So"  # Unicode "Symbol, other": the pictographs, not digits, joiners or skin-tone swatches

PIP_MODULES = {"scikit-image": "skimage", "scikit-learn": "sklearn"}  # package -> import name
SIZE_DIR = re.compile(r"^(\d+)(?:x\d+)?(?:@(\d+)x)?$")


class MissingSource(RuntimeError):
    """A set's source package is not installed; the message names the package."""


def apt_hint(package: str) -> str:
    return f"Debian package {package} (apt-get install -y {package})"


def pip_hint(module: str, package: str) -> str:
    return f"Python package {package} (pip install -e .[eval], or pip install {package}; import name {module})"


def python_data_dir(module: str, *parts: str) -> Path | None:
    """A data folder inside an installed Python package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)), *parts)


# ---------------------------------------------------------------------- sources


@dataclass(frozen=True)
class IconFiles:
    """Image files under some folders of one package (icon themes, game sprites).

    ``largest_per_name`` keeps, of the files sharing a name (an icon theme's sizes of
    one icon), the one with the largest raster, read from the ``NxN`` / ``N`` /
    ``NxN@2x`` folder it sits in, else from the file's header.
    """

    roots: tuple[Path, ...]
    package: str
    suffix: str = ".png"
    largest_per_name: bool = True

    def missing(self) -> list[str]:
        gone = [apt_hint(self.package) + f": {root} not found" for root in self.roots if not root.is_dir()]
        if self.suffix == ".svg" and shutil.which(SVG_RENDERER) is None:
            gone.append(apt_hint("librsvg2-bin") + f": {SVG_RENDERER} renders the SVG icons")
        return gone

    def origins(self) -> frozenset[str]:
        return frozenset(str(root.resolve()) for root in self.roots)

    def files(self) -> list[Path]:
        found: list[Path] = []
        for root in self.roots:
            for folder, _dirs, names in os.walk(root):
                for name in names:
                    path = Path(folder, name)
                    if name.endswith(self.suffix) and not Path(name).stem.endswith("-symbolic") and path.exists():
                        found.append(path)
        found.sort(key=lambda p: p.as_posix())
        if self.largest_per_name:
            best: dict[str, tuple[int, Path]] = {}
            for path in found:
                size = raster_size(path)
                if path.stem not in best or size > best[path.stem][0]:
                    best[path.stem] = (size, path)
            found = [path for _size, path in (best[name] for name in sorted(best))]
        unique: dict[str, Path] = {}
        for path in found:
            unique.setdefault(os.path.realpath(path), path)
        return list(unique.values())

    def prepare(self, path: Path, size: int) -> np.ndarray | None:
        if self.suffix == ".svg":
            rendered = render_svg(path)
            return None if rendered is None else square_on_white(rendered, size)
        return prepare_file(path, size)

    def build(self, size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        files = self.files()
        order = rng.permutation(len(files))
        return take_unique(((str(files[i]), lambda p=files[i]: self.prepare(p, size)) for i in order), n, size)


def raster_size(path: Path) -> int:
    """The pixel side of an icon: from its ``NxN[@Kx]`` folder, else its PNG header (SVG: unbounded)."""
    for part in reversed(path.parent.parts):
        match = SIZE_DIR.match(part)
        if match:
            return int(match.group(1)) * int(match.group(2) or 1)
    if path.suffix == ".svg":
        return sys.maxsize
    with Image.open(path) as image:
        return max(image.size)


def render_svg(path: Path) -> Image.Image | None:
    """An SVG icon rasterised at ``SVG_RENDER_PX`` (aspect kept), the way openclipart-png was made from SVG.

    None for a file the renderer cannot parse (one of gartoon's 544 declares no
    namespace for a prefix it uses): a broken source file is skipped, not repaired.
    """
    result = subprocess.run(
        [SVG_RENDERER, "--width", str(SVG_RENDER_PX), "--height", str(SVG_RENDER_PX), "--keep-aspect-ratio", str(path)],
        capture_output=True,
    )
    if result.returncode != 0:
        return None
    with Image.open(io.BytesIO(result.stdout)) as image:
        return image.convert("RGBA")


def emoji_half(codepoint: int) -> int:
    """0 (tune) or 1 (heldout): a fixed hash of the codepoint, so neighbours are not paired off."""
    return hashlib.sha256(f"U+{codepoint:04X}".encode()).digest()[0] % 2


def font_codepoints(font: Path) -> list[int]:
    """The single codepoints a font maps that are pictographic symbols (category ``So``)."""
    from fontTools.ttLib import TTFont

    with TTFont(font, lazy=True) as ttf:
        cmap = ttf.getBestCmap()
    return sorted(cp for cp in cmap if unicodedata.category(chr(cp)) == EMOJI_CATEGORY)


@dataclass(frozen=True)
class EmojiGlyphs:
    """One half of a font's emoji codepoints, each rendered alone and cropped to its ink.

    ``also_in``: only codepoints that font maps too (Symbola's emoji are the ones
    Noto draws, not its thousands of other symbols).
    """

    font: Path
    package: str
    pixels: int
    half: int
    colour: bool
    also_in: Path | None = None
    also_in_package: str = ""

    def missing(self) -> list[str]:
        gone = [] if self.font.is_file() else [apt_hint(self.package) + f": {self.font} not found"]
        if self.also_in is not None and not self.also_in.is_file():
            gone.append(apt_hint(self.also_in_package) + f": {self.also_in} not found")
        if importlib.util.find_spec("fontTools") is None:
            gone.append(pip_hint("fontTools", "fonttools"))
        return gone

    def codepoints(self) -> list[int]:
        chosen = [cp for cp in font_codepoints(self.font) if emoji_half(cp) == self.half]
        if self.also_in is not None:
            other = set(font_codepoints(self.also_in))
            chosen = [cp for cp in chosen if cp in other]
        return chosen

    def origins(self) -> frozenset[str]:
        return frozenset(f"U+{cp:04X}" for cp in self.codepoints())

    def render(self, font: ImageFont.FreeTypeFont, codepoint: int) -> Image.Image | None:
        side = 2 * self.pixels
        canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        if self.colour:
            draw.text((self.pixels // 4, self.pixels // 4), chr(codepoint), font=font, embedded_color=True)
        else:
            draw.text((self.pixels // 4, self.pixels // 4), chr(codepoint), font=font, fill=(0, 0, 0, 255))
        box = canvas.getchannel("A").getbbox()
        return None if box is None else canvas.crop(box)

    def build(self, size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        font = ImageFont.truetype(str(self.font), self.pixels)
        codepoints = self.codepoints()
        order = rng.permutation(len(codepoints))

        def prepared(cp: int):
            glyph = self.render(font, cp)
            return None if glyph is None else square_on_white(glyph, size)

        items = ((f"{self.font}#U+{codepoints[i]:04X}", lambda cp=codepoints[i]: prepared(cp)) for i in order)
        return take_unique(items, n, size)


@dataclass(frozen=True)
class PhotoCrops:
    """Random square crops of a few photos, taken in turn from each photo.

    The side is uniform between 1/8 and 1/2 of the photo's short side, so a crop
    shows a part of a scene at about the scale a 32x32 clip art shows a drawing.
    """

    photos: tuple[Path, ...]
    packages: tuple[str, ...]  # per photo, the package that ships it (for the error when it is missing)

    def missing(self) -> list[str]:
        return [
            f"{package}: {photo} not found"
            for photo, package in zip(self.photos, self.packages, strict=True)
            if not photo.is_file()
        ]

    def origins(self) -> frozenset[str]:
        return frozenset(str(photo.resolve()) for photo in self.photos)

    def build(self, size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        opened = [open_trusted(photo) for photo in self.photos]

        def crops():
            for i in range(n * 2):  # room for the duplicates take_unique drops
                k = i % len(opened)
                image = opened[k]
                short = min(image.size)
                side = int(rng.integers(max(short // 8, 1), short // 2 + 1))
                x = int(rng.integers(0, image.width - side + 1))
                y = int(rng.integers(0, image.height - side + 1))
                box = (x, y, x + side, y + side)
                yield (
                    f"{self.photos[k]}#x={x},y={y},side={side}",
                    lambda im=image, b=box: square_on_white(im.crop(b), size),
                )

        return take_unique(crops(), n, size)


@dataclass(frozen=True)
class ClipartTransform:
    """The clip-art test split under one pixel transform: what a flow of clip art must still flag.

    Its first ``n`` images, not a random draw, so every transform set shows the
    same drawings and two sets differ only by their transform.
    """

    test_npz: Path
    transform: str  # "inverted" | "upside-down"

    def missing(self) -> list[str]:
        if self.test_npz.is_file():
            return []
        return [f"the clip-art test split {self.test_npz} (python -m training.prepare_clipart {self.test_npz.parent})"]

    def origins(self) -> frozenset[str]:
        return frozenset()

    def build(self, size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        with np.load(self.test_npz) as data:
            images, paths = data["images"], data["paths"]
        if images.shape[-2:] != (size, size):
            raise ValueError(f"{self.test_npz} holds {images.shape[-2:]} images, not {size}x{size}")
        keep = np.arange(min(n, len(images)))  # the first n, so both transforms hold the same drawings
        chosen = images[keep]
        if self.transform == "inverted":
            out = 255 - chosen
        elif self.transform == "upside-down":
            out = chosen[:, :, ::-1, :]
        else:
            raise ValueError(f"unknown transform {self.transform!r}")
        return np.ascontiguousarray(out, dtype=np.uint8), [f"{paths[i]}#{self.transform}" for i in keep]


Source = IconFiles | EmojiGlyphs | PhotoCrops | ClipartTransform


def take_unique(items, n: int, size: int) -> tuple[np.ndarray, list[str]]:
    """The first ``n`` prepared images that are not exact copies of an earlier one.

    ``items`` yields ``(source, prepare)``; ``prepare()`` may return None (a glyph
    with no ink), which is skipped.
    """
    images: list[np.ndarray] = []
    sources: list[str] = []
    seen: set[bytes] = set()
    for source, prepare in items:
        if len(images) >= n:
            break
        image = prepare()
        if image is None:
            continue
        key = hashlib.sha256(image.tobytes()).digest()
        if key in seen:
            continue
        seen.add(key)
        images.append(image)
        sources.append(source)
    stacked = np.stack(images) if images else np.zeros((0, 3, size, size), dtype=np.uint8)
    return stacked, sources


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
            "gnome-icon-theme-gartoon, librsvg2-bin",
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
        SetSpec(
            "clipart-inverted",
            TRANSFORM,
            TRANSFORM,
            "the clip-art test split, colour-inverted (255 - x)",
            "openclipart-png",
            ClipartTransform(clipart_test, "inverted"),
        ),
        SetSpec(
            "clipart-upside-down",
            TRANSFORM,
            TRANSFORM,
            "the clip-art test split, flipped vertically",
            "openclipart-png",
            ClipartTransform(clipart_test, "upside-down"),
        ),
    ]


def check_groups_disjoint(specs: list[SetSpec]) -> None:
    """Refuse sets where one source (theme, photo file, emoji codepoint) or one name is in tune and heldout."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"set names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    for spec in specs:
        allowed = (TRANSFORM,) if spec.kind == TRANSFORM else (TUNE, HELDOUT)
        if spec.group not in allowed:
            raise ValueError(f"set {spec.name}: group {spec.group!r} is not one of {allowed} for kind {spec.kind!r}")
    tune = {origin: spec.name for spec in specs if spec.group == TUNE for origin in spec.source.origins()}
    for spec in specs:
        if spec.group != HELDOUT:
            continue
        shared = sorted(origin for origin in spec.source.origins() if origin in tune)
        if shared:
            raise ValueError(
                f"heldout set {spec.name} shares {len(shared)} source(s) with tune set {tune[shared[0]]}: {shared[:3]}"
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
