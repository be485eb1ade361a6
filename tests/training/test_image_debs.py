"""The Debian packages the image sets read: each source names its own, and the list covers every source."""

from pathlib import Path

from training.colour_sets import default_sets
from training.general_images import mix_sources
from training.image_debs import image_debs
from training.image_sources import BothPolarities, ClipartTransform, EmojiGlyphs, FontGlyphs, IconFiles, PhotoCrops


def test_each_source_names_the_packages_it_reads(tmp_path):
    assert IconFiles((tmp_path,), "some-icon-theme").debs() == {"some-icon-theme"}
    assert IconFiles((tmp_path,), "svg-theme", suffix=".svg").debs() == {"svg-theme", "librsvg2-bin"}
    assert EmojiGlyphs(tmp_path / "f.ttf", "a-font", 24, 0, False, tmp_path / "g.ttf", "b-font").debs() == {
        "a-font",
        "b-font",
    }
    assert FontGlyphs(tmp_path / "f.ttf", "icon-font").debs() == {"icon-font"}
    assert BothPolarities(FontGlyphs(tmp_path / "f.ttf", "icon-font")).debs() == {"icon-font"}
    assert PhotoCrops((tmp_path / "p.jpg",), ("pip",)).debs() == set()  # pip wheels' photos
    assert PhotoCrops((tmp_path / "p.jpg",), ("x",), deb="backgrounds").debs() == {"backgrounds"}
    assert ClipartTransform(tmp_path / "t.npz", "inverted").debs() == {"openclipart-png"}


def test_the_list_covers_every_set_and_mix_source():
    listed = set(image_debs())
    for source in [spec.source for spec in default_sets()] + [part.source for part in mix_sources()]:
        assert source.debs() <= listed
    assert {"fonts-font-awesome", "mate-backgrounds", "fonts-materialdesignicons-webfont"} <= listed


def test_the_makefile_installs_that_list():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert "python -m training.image_debs" in makefile and "-m training.image_debs)" in makefile
