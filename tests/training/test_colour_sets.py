"""Colour OOD sets: sources picked by the documented rules, tune and heldout never share one, the index is exact.

Every input is a tiny fake built in tmp_path (an icon theme tree, a photo, a font, a
clip-art test split), so no Debian package is needed.
"""

import hashlib
import json
import os
import unicodedata

import numpy as np
import pytest
from PIL import Image

from training.colour_sets import (
    FAR,
    HELDOUT,
    INDEX_NAME,
    NEAR,
    TRANSFORM,
    TUNE,
    ClipartTransform,
    EmojiGlyphs,
    IconFiles,
    MissingSource,
    PhotoCrops,
    SetSpec,
    check_groups_disjoint,
    emoji_half,
    images_sha256,
    main,
    write_sets,
)

PICTOGRAPHS = [0x2600, 0x2601, 0x2602, 0x2603, 0x2605, 0x2614, 0x2665, 0x2666, 0x263A, 0x2708]
NOT_PICTOGRAPHS = [ord("1"), 0x1F3FB]  # a digit (Nd), a skin-tone modifier (Sk)


def save_png(path, colour, side, alpha=255):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (side, side), tuple(colour) + (alpha,)).save(path)
    return path


@pytest.fixture
def theme(tmp_path):
    """A fake icon theme: two sizes of ``a`` (the big one blue), ``b``, a symbolic icon, a symlinked copy."""
    root = tmp_path / "theme"
    save_png(root / "16x16" / "apps" / "a.png", (255, 0, 0), 16)
    save_png(root / "48x48" / "apps" / "a.png", (0, 0, 255), 48)
    save_png(root / "32x32" / "apps" / "b.png", (0, 200, 0), 32)
    save_png(root / "48x48" / "status" / "c-symbolic.png", (40, 40, 40), 48)
    os.symlink(root / "48x48" / "apps" / "a.png", root / "48x48" / "apps" / "a-alias.png")
    return root


@pytest.fixture
def font(tmp_path):
    """A TrueType font mapping a few pictographs (each a right triangle of its own size), a digit and a modifier."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    codepoints = PICTOGRAPHS + NOT_PICTOGRAPHS
    names = [f"g{i}" for i in range(len(codepoints))]
    glyphs = {".notdef": TTGlyphPen(None).glyph()}
    for i, name in enumerate(names):
        pen = TTGlyphPen(None)
        height = 150 + 60 * i
        pen.moveTo((100, 0))
        pen.lineTo((100, height))
        pen.lineTo((500 + 30 * i, 0))
        pen.closePath()
        glyphs[name] = pen.glyph()
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder([".notdef", *names])
    builder.setupCharacterMap(dict(zip(codepoints, names, strict=True)))
    builder.setupGlyf(glyphs)
    builder.setupHorizontalMetrics({name: (1000, 0) for name in glyphs})
    builder.setupHorizontalHeader(ascent=900, descent=-100)
    builder.setupNameTable({"familyName": "Tiny", "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=900, usWinAscent=900, usWinDescent=100)
    builder.setupPost()
    path = tmp_path / "tiny.ttf"
    builder.save(str(path))
    return path


@pytest.fixture
def clipart_test(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (12, 3, 8, 8), dtype=np.uint8)
    path = tmp_path / "clipart" / "test.npz"
    path.parent.mkdir()
    np.savez(path, images=images, paths=np.array([f"art/{i}.png" for i in range(12)]))
    return path, images


def spec(name, group, source, kind=NEAR):
    return SetSpec(name, kind, group, f"fake {name}", "fake-package", source)


def test_icon_theme_keeps_the_largest_raster_of_each_name(theme):
    files = IconFiles((theme,), "fake-icon-theme").files()
    # a: the 48x48 one; its symlinked alias is the same file; c-symbolic is skipped.
    assert [f.relative_to(theme).as_posix() for f in files] == ["48x48/apps/a.png", "32x32/apps/b.png"]

    images, sources = IconFiles((theme,), "fake-icon-theme").build(8, 10, np.random.default_rng(0))
    assert images.shape == (2, 3, 8, 8) and images.dtype == np.uint8
    colours = {tuple(image[:, 4, 4]) for image in images}
    assert colours == {(0, 0, 255), (0, 200, 0)}  # the big blue a, never the small red one
    assert sorted(sources) == sorted(str(f) for f in files)


def test_sprites_keep_every_file_but_drop_exact_duplicates(tmp_path):
    root = tmp_path / "sprites"
    save_png(root / "snail" / "left-0.png", (10, 20, 30), 12)
    save_png(root / "yeti" / "left-0.png", (90, 20, 30), 20)
    save_png(root / "yeti" / "copy.png", (90, 20, 30), 20)  # same pixels as yeti/left-0
    sprites = IconFiles((root,), "fake-sprites", largest_per_name=False)
    assert len(sprites.files()) == 3
    images, sources = sprites.build(8, 10, np.random.default_rng(0))
    assert len(images) == 2 and len({s.split("/")[-2] for s in sources}) == 2
    capped, _ = sprites.build(8, 1, np.random.default_rng(0))
    assert len(capped) == 1


def test_emoji_halves_split_the_pictographs_and_render_ink(font):
    tune = EmojiGlyphs(font, "fake-font", 24, half=0, colour=False)
    heldout = EmojiGlyphs(font, "fake-font", 24, half=1, colour=False)
    assert set(tune.codepoints()).isdisjoint(heldout.codepoints())
    assert sorted(tune.codepoints() + heldout.codepoints()) == sorted(PICTOGRAPHS)  # no digit, no modifier
    assert all(unicodedata.category(chr(cp)) == "So" for cp in tune.codepoints())
    assert {emoji_half(cp) for cp in PICTOGRAPHS} == {0, 1}

    images, sources = heldout.build(16, 100, np.random.default_rng(0))
    assert len(images) == len(heldout.codepoints())
    assert all(s.startswith(f"{font}#U+") for s in sources)
    for image in images:
        assert image.min() < 60 and image.max() == 255  # black ink on white, cropped, padded


def test_emoji_set_restricted_to_another_fonts_codepoints(font, tmp_path):
    glyphs = EmojiGlyphs(font, "fake-font", 24, half=1, colour=False, also_in=font, also_in_package="other-font")
    assert glyphs.codepoints() == EmojiGlyphs(font, "fake-font", 24, half=1, colour=False).codepoints()
    gone = EmojiGlyphs(
        font, "fake-font", 24, half=1, colour=False, also_in=tmp_path / "no.ttf", also_in_package="other"
    )
    assert any("apt-get install -y other" in line for line in gone.missing())


def test_photo_crops_are_square_parts_of_the_photo(tmp_path):
    gradient = np.zeros((60, 100), np.uint8) + np.arange(100, dtype=np.uint8)[None, :] * 2
    photo = tmp_path / "gray.png"
    Image.fromarray(gradient, mode="L").save(photo)
    images, sources = PhotoCrops((photo,), ("fake-pip",)).build(8, 20, np.random.default_rng(1))
    assert images.shape == (20, 3, 8, 8)
    assert (images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all()  # gray repeated to RGB
    for source in sources:
        fields = dict(item.split("=") for item in source.split("#")[1].split(","))
        side, x, y = int(fields["side"]), int(fields["x"]), int(fields["y"])
        assert 60 // 8 <= side <= 60 // 2 and x + side <= 100 and y + side <= 60


def test_tune_and_heldout_never_share_a_source(theme, tmp_path, font):
    other = tmp_path / "other-theme"
    save_png(other / "64x64" / "x.png", (1, 2, 3), 64)
    photo = save_png(tmp_path / "photo.png", (5, 6, 7), 64)
    check_groups_disjoint(
        [
            spec("icons-a", TUNE, IconFiles((theme,), "t")),
            spec("icons-b", HELDOUT, IconFiles((other,), "o")),
            spec("emoji-a", TUNE, EmojiGlyphs(font, "f", 24, half=0, colour=True)),
            spec("emoji-b", HELDOUT, EmojiGlyphs(font, "f", 24, half=1, colour=False)),
        ]
    )
    with pytest.raises(ValueError, match="heldout set icons-b shares 1 source.*tune set icons-a"):
        check_groups_disjoint(
            [spec("icons-a", TUNE, IconFiles((theme,), "t")), spec("icons-b", HELDOUT, IconFiles((theme,), "t"))]
        )
    with pytest.raises(ValueError, match="emoji-b shares"):  # the same codepoints, even in another font or colour
        check_groups_disjoint(
            [
                spec("emoji-a", TUNE, EmojiGlyphs(font, "f", 24, 0, True)),
                spec("emoji-b", HELDOUT, EmojiGlyphs(font, "g", 30, 0, False)),
            ]
        )
    with pytest.raises(ValueError, match="photos-b shares"):
        check_groups_disjoint(
            [
                spec("photos-a", TUNE, PhotoCrops((photo,), ("p",)), FAR),
                spec("photos-b", HELDOUT, PhotoCrops((photo,), ("p",)), FAR),
            ]
        )
    with pytest.raises(ValueError, match="group 'tune' is not one of"):
        check_groups_disjoint([spec("flip", TUNE, ClipartTransform(photo, "upside-down"), TRANSFORM)])
    with pytest.raises(ValueError, match="names repeat"):
        check_groups_disjoint([spec("x", TUNE, IconFiles((theme,), "t")), spec("x", TUNE, IconFiles((other,), "o"))])


def test_write_sets_index_is_exact_and_deterministic(theme, tmp_path, clipart_test):
    test_npz, clip = clipart_test
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(photo)
    specs = [
        spec("icons", TUNE, IconFiles((theme,), "fake-icon-theme")),
        spec("photos", HELDOUT, PhotoCrops((photo,), ("fake-pip",)), FAR),
        spec("inverted", TRANSFORM, ClipartTransform(test_npz, "inverted"), TRANSFORM),
        spec("upside-down", TRANSFORM, ClipartTransform(test_npz, "upside-down"), TRANSFORM),
    ]
    out = tmp_path / "sets"
    records = write_sets(out, specs, size=8, n=10, seed=5, log=lambda line: None)

    index = json.loads((out / INDEX_NAME).read_text())
    assert (index["size"], index["max_images"], index["seed"]) == (8, 10, 5)
    assert [row["name"] for row in index["sets"]] == ["icons", "photos", "inverted", "upside-down"]
    assert [(row["kind"], row["group"]) for row in index["sets"]] == [
        (NEAR, TUNE),
        (FAR, HELDOUT),
        (TRANSFORM, TRANSFORM),
        (TRANSFORM, TRANSFORM),
    ]
    for row in index["sets"]:
        with np.load(out / row["file"]) as data:
            images, sources = data["images"], data["sources"]
        assert images.dtype == np.uint8 and images.shape[1:] == (3, 8, 8)
        assert row["count"] == len(images) == len(sources)
        assert row["sha256"] == hashlib.sha256(images.tobytes()).hexdigest() == images_sha256(images)
        assert row["package"] == "fake-package" and row["description"] == f"fake {row['name']}"
    assert [r.count for r in records] == [2, 10, 10, 10]  # icons: 2 in the theme; the rest capped at n

    with np.load(out / "inverted.npz") as inverted, np.load(out / "upside-down.npz") as flipped:
        kept = [int(s.split("/")[1].split(".")[0]) for s in inverted["sources"]]
        np.testing.assert_array_equal(inverted["images"], 255 - clip[kept])
        assert list(flipped["sources"]) == [f"art/{i}.png#upside-down" for i in kept]
        np.testing.assert_array_equal(flipped["images"], clip[kept][:, :, ::-1, :])

    again = write_sets(tmp_path / "again", specs, size=8, n=10, seed=5, log=lambda line: None)
    assert [r.sha256 for r in again] == [r.sha256 for r in records]
    other_seed = write_sets(tmp_path / "seed6", specs, size=8, n=10, seed=6, log=lambda line: None)
    assert other_seed[1].sha256 != records[1].sha256  # the photo crops move with the seed


def test_missing_package_is_named_before_anything_is_built(tmp_path, clipart_test):
    specs = [
        spec("transform", TRANSFORM, ClipartTransform(clipart_test[0], "inverted"), TRANSFORM),
        spec("icons", TUNE, IconFiles((tmp_path / "no-such-theme",), "oxygen-icon-theme")),
        spec("flip", TRANSFORM, ClipartTransform(tmp_path / "none" / "test.npz", "upside-down"), TRANSFORM),
    ]
    with pytest.raises(MissingSource) as err:
        write_sets(tmp_path / "out", specs, size=8, n=4, seed=0, log=lambda line: None)
    message = str(err.value)
    assert "apt-get install -y oxygen-icon-theme" in message
    assert "python -m training.prepare_clipart" in message
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_non_positive_count(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "out"), "--n", "0"])
    assert exit_.value.code == 2
