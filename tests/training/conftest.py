"""Tiny fakes of the Debian sources the image sets are drawn from, built in tmp_path.

The constants and ``save_png`` live in :mod:`tests.training.fake_sources`, so test
modules import them from there and get the fixtures from here.
"""

import os

import pytest

from tests.training.fake_sources import NOT_PICTOGRAPHS, PICTOGRAPHS, PRIVATE_USE, save_png


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
    """A TrueType font: pictographs, private-use icons (each a right triangle of its own size), a digit, a modifier."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    codepoints = PICTOGRAPHS + NOT_PICTOGRAPHS + PRIVATE_USE
    names = [f"g{i}" for i in range(len(codepoints))]
    glyphs = {".notdef": TTGlyphPen(None).glyph()}
    for i, name in enumerate(names):
        pen = TTGlyphPen(None)
        height = 150 + 45 * i  # up to 780: inside the 900 ascent
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
