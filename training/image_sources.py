"""Where OOD and general-domain images come from: icon files, font glyphs, photo crops, transforms.

Every source here answers the same three questions, so :mod:`training.colour_sets`
(the OOD sets) and :mod:`training.general_images` (the background flow's mix) can
hold any of them: ``missing()`` (what to install, before anything is built),
``origins()`` (the files, fonts or codepoints it draws from, so two groups can be
proved disjoint) and ``build(size, n, rng)`` (at most ``n`` prepared images).
Every image is prepared like the clip art (:mod:`training.square_on_white`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from training.prepare_clipart import CLIPART_DEB
from training.square_on_white import open_trusted, prepare_file, square_on_white

ICONS = Path("/usr/share/icons")
SVG_RENDER_PX = 256
SVG_RENDERER = "rsvg-convert"
SVG_RENDERER_DEB = "librsvg2-bin"  # the Debian package that ships it
PRIVATE_USE_CATEGORY = "Co"  # where icon fonts keep their pictographs
EMOJI_CATEGORY = "So"  # Unicode "Symbol, other": the pictographs, not digits, joiners or skin-tone swatches
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
            gone.append(apt_hint(SVG_RENDERER_DEB) + f": {SVG_RENDERER} renders the SVG icons")
        return gone

    def origins(self) -> frozenset[str]:
        return frozenset(str(root.resolve()) for root in self.roots)

    def debs(self) -> frozenset[str]:
        return frozenset({self.package, SVG_RENDERER_DEB} if self.suffix == ".svg" else {self.package})

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


def font_codepoints(font: Path, category: str = EMOJI_CATEGORY) -> list[int]:
    """The single codepoints a font maps in one Unicode category (default ``So``, the pictographs)."""
    from fontTools.ttLib import TTFont

    with TTFont(font, lazy=True) as ttf:
        cmap = ttf.getBestCmap()
    return sorted(cp for cp in cmap if unicodedata.category(chr(cp)) == category)


def font_missing(font: Path, package: str) -> list[str]:
    """What to install before glyphs of ``font`` can be listed: the font's package, and fontTools."""
    gone = [] if font.is_file() else [apt_hint(package) + f": {font} not found"]
    if importlib.util.find_spec("fontTools") is None:
        gone.append(pip_hint("fontTools", "fonttools"))
    return gone


def glyph_images(
    font_path: Path, pixels: int, codepoints: list[int], colour: bool, size: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """At most ``n`` of the codepoints, in a seeded order, each rendered alone and prepared like the clip art."""
    font = ImageFont.truetype(str(font_path), pixels)
    order = rng.permutation(len(codepoints))

    def prepared(cp: int):
        glyph = render_glyph(font, cp, pixels, colour)
        return None if glyph is None else square_on_white(glyph, size)

    items = ((f"{font_path}#U+{codepoints[i]:04X}", lambda cp=codepoints[i]: prepared(cp)) for i in order)
    return take_unique(items, n, size)


def render_glyph(font: ImageFont.FreeTypeFont, codepoint: int, pixels: int, colour: bool) -> Image.Image | None:
    """One glyph alone on transparency, cropped to its ink (None when it has none).

    Colour fonts draw their own bitmaps; monochrome glyphs are drawn in black, as
    line art is printed.
    """
    side = 2 * pixels
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    if colour:
        draw.text((pixels // 4, pixels // 4), chr(codepoint), font=font, embedded_color=True)
    else:
        draw.text((pixels // 4, pixels // 4), chr(codepoint), font=font, fill=(0, 0, 0, 255))
    box = canvas.getchannel("A").getbbox()
    return None if box is None else canvas.crop(box)


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
        gone = font_missing(self.font, self.package)
        if self.also_in is not None and not self.also_in.is_file():
            gone.append(apt_hint(self.also_in_package) + f": {self.also_in} not found")  # callers sort the lines
        return gone

    def codepoints(self) -> list[int]:
        chosen = [cp for cp in font_codepoints(self.font) if emoji_half(cp) == self.half]
        if self.also_in is not None:
            other = set(font_codepoints(self.also_in))
            chosen = [cp for cp in chosen if cp in other]
        return chosen

    def origins(self) -> frozenset[str]:
        return frozenset(f"U+{cp:04X}" for cp in self.codepoints())

    def debs(self) -> frozenset[str]:
        return frozenset(p for p in (self.package, self.also_in_package) if p)

    def build(self, size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        return glyph_images(self.font, self.pixels, self.codepoints(), self.colour, size, n, rng)


@dataclass(frozen=True)
class PhotoCrops:
    """Random square crops of a few photos, taken in turn from each photo.

    The side is uniform between 1/8 and 1/2 of the photo's short side, so a crop
    shows a part of a scene at about the scale a 32x32 clip art shows a drawing.
    """

    photos: tuple[Path, ...]
    packages: tuple[str, ...] = ()  # per photo, how to install it (pip wheels' photos); unused with ``deb``
    gray: bool = False  # colour photos made gray (Pillow's luma), repeated to RGB
    deb: str = ""  # the Debian package that ships every photo, if one does

    def missing(self) -> list[str]:
        hints = (apt_hint(self.deb),) * len(self.photos) if self.deb else self.packages
        return [
            f"{hint}: {photo} not found" for photo, hint in zip(self.photos, hints, strict=True) if not photo.is_file()
        ]

    def origins(self) -> frozenset[str]:
        return frozenset(str(photo.resolve()) for photo in self.photos)

    def debs(self) -> frozenset[str]:
        return frozenset({self.deb} if self.deb else set())

    def build(self, size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        opened = [open_trusted(photo) for photo in self.photos]
        if self.gray:
            opened = [image.convert("L").convert("RGBA") for image in opened]

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

    def debs(self) -> frozenset[str]:
        return frozenset({CLIPART_DEB})  # the test split is cut from it (training.prepare_clipart)

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


@dataclass(frozen=True)
class FontGlyphs:
    """Every private-use glyph of an icon font (Font Awesome, Material Design), black line art.

    Icon fonts put their pictographs in the Private Use Area, where a codepoint means
    nothing across fonts: the origin is the font file, not the codepoints.
    """

    font: Path
    package: str
    pixels: int = 109  # the emoji sets' render size, so glyphs are as finely drawn

    def missing(self) -> list[str]:
        return font_missing(self.font, self.package)

    def codepoints(self) -> list[int]:
        return font_codepoints(self.font, PRIVATE_USE_CATEGORY)

    def origins(self) -> frozenset[str]:
        return frozenset({str(self.font.resolve())})

    def debs(self) -> frozenset[str]:
        return frozenset({self.package})

    def build(self, size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        return glyph_images(self.font, self.pixels, self.codepoints(), False, size, n, rng)


@dataclass(frozen=True)
class BothPolarities:
    """A source with a random ``share`` of its images inverted (255 - x): light ink on a dark ground.

    Line art, text and icons are drawn dark-on-light and light-on-dark (dark themes,
    chalkboards, negative prints); a general model that has only seen one polarity
    calls the other unlikely whatever the domain.
    """

    source: Source
    share: float = 0.5

    def missing(self) -> list[str]:
        return self.source.missing()

    def origins(self) -> frozenset[str]:
        return self.source.origins()

    def debs(self) -> frozenset[str]:
        return self.source.debs()

    def build(self, size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        images, sources = self.source.build(size, n, rng)
        flip = rng.random(len(images)) < self.share
        images = images.copy()
        images[flip] = 255 - images[flip]
        return images, [f"{s}#inverted" if f else s for s, f in zip(sources, flip, strict=True)]


Source = IconFiles | EmojiGlyphs | FontGlyphs | PhotoCrops | ClipartTransform | BothPolarities


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
