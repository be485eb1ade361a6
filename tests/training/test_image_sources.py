"""Image sources: each picks its files or glyphs by the documented rule and prepares them like the clip art.

Every input is a tiny fake built in tmp_path (an icon theme tree, a photo, a font),
so no Debian package is needed.
"""

import unicodedata

import numpy as np
from PIL import Image

from tests.training.fake_sources import PICTOGRAPHS, PRIVATE_USE, save_png
from training.image_sources import BothPolarities, EmojiGlyphs, FontGlyphs, IconFiles, PhotoCrops, emoji_half


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


def test_icon_font_glyphs_are_its_private_use_pictographs_in_black(font, tmp_path):
    glyphs = FontGlyphs(font, "fake-icon-font", pixels=24)
    assert glyphs.codepoints() == PRIVATE_USE  # no So pictograph, digit or modifier
    assert glyphs.origins() == frozenset({str(font.resolve())})  # a private-use codepoint means nothing elsewhere
    images, sources = glyphs.build(16, 100, np.random.default_rng(0))
    assert len(images) == len(PRIVATE_USE) and images.shape[1:] == (3, 16, 16)
    assert sorted(s.split("#")[1] for s in sources) == [f"U+{cp:04X}" for cp in PRIVATE_USE]
    for image in images:
        assert image.min() < 60 and image.max() == 255  # black ink on white
        assert (image[0] == image[1]).all() and (image[1] == image[2]).all()  # monochrome
    assert any("apt-get install -y fake" in line for line in FontGlyphs(tmp_path / "no.ttf", "fake").missing())


def test_both_polarities_inverts_the_drawn_share_and_says_which(theme):
    icons = IconFiles((theme,), "fake-icon-theme")
    plain, plain_sources = icons.build(8, 10, np.random.default_rng(4))
    inverted, sources = BothPolarities(icons, share=1.0).build(8, 10, np.random.default_rng(4))
    np.testing.assert_array_equal(inverted, 255 - plain)
    assert sources == [f"{s}#inverted" for s in plain_sources]
    kept, kept_sources = BothPolarities(icons, share=0.0).build(8, 10, np.random.default_rng(4))
    np.testing.assert_array_equal(kept, plain)
    assert kept_sources == plain_sources
    assert BothPolarities(icons).origins() == icons.origins() and BothPolarities(icons).missing() == []


def test_half_of_a_large_source_is_inverted(font):
    glyphs = EmojiGlyphs(font, "fake-font", 24, half=0, colour=False)
    both = BothPolarities(glyphs, share=0.5)
    plain, _ = glyphs.build(8, 100, np.random.default_rng(9))
    images, sources = both.build(8, 100, np.random.default_rng(9))
    flipped = np.array([s.endswith("#inverted") for s in sources])
    np.testing.assert_array_equal(images[flipped], 255 - plain[flipped])
    np.testing.assert_array_equal(images[~flipped], plain[~flipped])
    assert (images[flipped][:, :, 0, 0] == 0).all()  # the white ground turned black


def test_gray_photo_crops_of_a_colour_photo_are_its_luma(tmp_path):
    rng = np.random.default_rng(5)
    colour = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    photo = tmp_path / "colour.png"
    Image.fromarray(colour).save(photo)
    gray, sources = PhotoCrops((photo,), ("p",), gray=True).build(8, 6, np.random.default_rng(1))
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()
    luma = np.asarray(Image.fromarray(colour).convert("L"))
    fields = dict(item.split("=") for item in sources[0].split("#")[1].split(","))
    x, y, side = int(fields["x"]), int(fields["y"]), int(fields["side"])
    expected = Image.fromarray(luma[y : y + side, x : x + side]).convert("RGBA")
    from training.square_on_white import square_on_white

    np.testing.assert_array_equal(gray[0], square_on_white(expected, 8))
