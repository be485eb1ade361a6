"""The general-domain mix: never a held-out set's source; gray and resized like the model's images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import training.general_images as general_images_module
from training.build_background import general_images
from training.build_plan import GENERAL_NONE
from training.colour_sets import FINAL, HELDOUT, NEAR, TUNE, SetSpec
from training.data import resize_images
from training.general_images import GeneralSource, check_no_heldout_source, extra_sources, to_gray, tune_sources
from training.image_sources import IconFiles


def test_the_mix_as_shipped_shares_no_source_with_a_held_out_set():
    check_no_heldout_source(tune_sources() + extra_sources())


def test_a_mix_with_a_held_out_source_is_refused(tmp_path, monkeypatch):
    for folder in ("held/apps", "tune", "other"):
        (tmp_path / folder).mkdir(parents=True)
    specs = [
        SetSpec("icons-held", NEAR, HELDOUT, "", "pkg", IconFiles((tmp_path / "held",), "pkg")),
        SetSpec("icons-tune", NEAR, TUNE, "", "pkg", IconFiles((tmp_path / "tune",), "pkg")),
    ]
    monkeypatch.setattr(general_images_module, "default_sets", lambda: specs)
    check_no_heldout_source([GeneralSource("ok", IconFiles((tmp_path / "tune", tmp_path / "other"), "pkg"))])
    with pytest.raises(ValueError, match="icons-held"):
        check_no_heldout_source([GeneralSource("same", IconFiles((tmp_path / "held",), "pkg"))])
    specs.append(SetSpec("icons-final", NEAR, FINAL, "", "pkg", IconFiles((tmp_path / "other",), "pkg")))
    with pytest.raises(ValueError, match="icons-final"):  # the final group is as unseen as heldout
        check_no_heldout_source([GeneralSource("ok", IconFiles((tmp_path / "tune", tmp_path / "other"), "pkg"))])
    with pytest.raises(ValueError, match="icons-held"):  # a folder inside a held-out theme is that theme
        check_no_heldout_source([GeneralSource("inside", IconFiles((tmp_path / "held" / "apps",), "pkg"))])


def test_no_tune_source_is_a_held_out_one_and_tango_is_left_out_of_the_tune_sets():
    names = {part.name for part in tune_sources()}
    assert names and all(name.endswith("-source") for name in names)
    assert not any("moka" in n or "faenza" in n or "supertux" in n or "heldout" in n for n in names)


def test_gray_is_pillows_luma():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 3, 4, 4), dtype=np.uint8)
    expected = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).convert("L")) for im in rgb])[:, None]
    np.testing.assert_array_equal(to_gray(rgb), expected)


def test_square_mix_images_are_resized_to_a_non_square_model(tmp_path):
    rng = np.random.default_rng(1)
    square = rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    out = resize_images(square, (6, 4))  # what general_images does to the square mix
    assert out.shape == (3, 3, 6, 4) and out.dtype == np.uint8
    same = resize_images(square, (8, 8))
    assert same is square


def test_a_named_mix_is_read_and_converted_and_none_means_none(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "g.npz", images=rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8))
    gray = general_images(str(tmp_path / "g.npz"), (1, 8, 8))
    assert gray.shape == (6, 1, 8, 8)
    assert general_images(GENERAL_NONE, (3, 8, 8)) is None


class FakeSource:
    """A source of flat-colour images, present or not."""

    def __init__(self, n: int, present: bool = True) -> None:
        self.n, self.present = n, present

    def missing(self) -> list[str]:
        return [] if self.present else ["Debian package fake-icons (apt-get install -y fake-icons)"]

    def origins(self) -> frozenset[str]:
        return frozenset()

    def build(self, size, n, rng):
        colours = rng.integers(0, 256, (min(n, self.n), 3, 1, 1), dtype=np.uint8)
        return np.broadcast_to(colours, (len(colours), 3, size, size)).copy(), [f"c{i}" for i in range(len(colours))]


def test_a_missing_source_is_skipped_and_named_and_too_few_images_refused(monkeypatch):
    parts = [GeneralSource("a", FakeSource(1500)), GeneralSource("gone", FakeSource(10, present=False))]
    monkeypatch.setattr(general_images_module, "mix_sources", lambda: parts)
    monkeypatch.setattr(general_images_module, "check_no_heldout_source", lambda mix: None)
    said = []
    with pytest.raises(RuntimeError, match="fake-icons"):  # 1,500 images: too few, and it says what to install
        general_images_module.build_mix(8, 3, 0, 2500, log=lambda line, **_: said.append(line))
    assert any(line.startswith("gone: skipped") for line in said)
    parts.append(GeneralSource("b", FakeSource(1000)))
    images, sources, groups = general_images_module.build_mix(8, 1, 0, 2500, log=lambda *a, **k: None)
    assert images.shape == (2500, 1, 8, 8) and len(sources) == 2500 and set(groups) == {"a", "b"}


def test_line_art_comes_in_both_polarities_and_only_from_the_tune_half_of_codepoints():
    from training.image_sources import BothPolarities, EmojiGlyphs, emoji_half

    parts = general_images_module.line_art_sources()
    assert parts and all(isinstance(part.source, BothPolarities) for part in parts)
    for part in parts:
        inner = part.source.source
        if isinstance(inner, EmojiGlyphs) and not inner.missing():
            assert {emoji_half(cp) for cp in inner.codepoints()} == {0}
