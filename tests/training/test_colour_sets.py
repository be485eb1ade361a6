"""Colour OOD sets: tune, heldout and final never share a source, the index is exact.

Every input is a tiny fake built in tmp_path (an icon theme tree, a photo, a font, a
clip-art test split), so no Debian package is needed.
"""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from tests.training.fake_sources import save_png
from training.colour_sets import (
    FAR,
    FINAL,
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
    images_sha256,
    main,
    write_sets,
)


@pytest.fixture
def clipart_test(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (12, 3, 8, 8), dtype=np.uint8)
    path = tmp_path / "clipart" / "test.npz"
    path.parent.mkdir()
    np.savez(path, images=images, paths=np.array([f"art/{i}.png" for i in range(12)]))
    return path, images


def spec(name, group, source, kind=NEAR):
    return SetSpec(name, kind, group, f"fake {name}", "fake-package", source)


def test_tune_heldout_and_final_never_share_a_source(theme, tmp_path, font):
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
    final = spec("icons-c", FINAL, IconFiles((tmp_path / "third",), "f"))
    check_groups_disjoint(
        [spec("icons-a", TUNE, IconFiles((theme,), "t")), spec("icons-b", HELDOUT, IconFiles((other,), "o")), final]
    )
    with pytest.raises(ValueError, match="final set icons-c shares 1 source.*heldout set icons-b"):
        check_groups_disjoint(
            [spec("icons-b", HELDOUT, IconFiles((other,), "o")), spec("icons-c", FINAL, IconFiles((other,), "o"))]
        )
    with pytest.raises(ValueError, match="final set icons-c shares 1 source.*tune set icons-a"):
        check_groups_disjoint(
            [spec("icons-a", TUNE, IconFiles((theme,), "t")), spec("icons-c", FINAL, IconFiles((theme,), "t"))]
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
