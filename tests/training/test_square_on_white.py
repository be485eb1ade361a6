"""The clip-art preparation: transparency becomes white, the drawing is padded square and centred, LANCZOS to size."""

import numpy as np
from PIL import Image

from training.square_on_white import prepare_file, square_on_white

WHITE = [255, 255, 255]


def test_transparent_png_is_composited_on_white_and_padded_square(tmp_path):
    # 8 wide, 4 high: left half opaque red, right half fully transparent black.
    rgba = np.zeros((4, 8, 4), np.uint8)
    rgba[:, :4] = [255, 0, 0, 255]
    path = tmp_path / "wide.png"
    Image.fromarray(rgba, mode="RGBA").save(path)

    image = prepare_file(path, 8)  # square side 8 = target size: no resampling, exact pixels

    assert image.dtype == np.uint8 and image.shape == (3, 8, 8)
    hwc = image.transpose(1, 2, 0)
    assert (hwc[:2] == WHITE).all() and (hwc[6:] == WHITE).all()  # 2 rows of padding above and below
    assert (hwc[2:6, :4] == [255, 0, 0]).all()
    assert (hwc[2:6, 4:] == WHITE).all()  # transparent black -> white, never black


def test_half_transparent_black_becomes_mid_gray():
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 3] = 128
    image = square_on_white(Image.fromarray(rgba, mode="RGBA"), 6)
    assert np.abs(image.astype(int) - 127).max() <= 1


def test_palette_transparency_and_gray_images(tmp_path):
    palette = Image.new("P", (5, 5), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((2, 2), 1)
    path = tmp_path / "palette.png"
    palette.save(path, transparency=0)
    image = prepare_file(path, 5).transpose(1, 2, 0)
    assert (image[2, 2] == [10, 200, 30]).all()
    assert (image[0, 0] == WHITE).all()  # the transparent palette index is white, not black

    gray = square_on_white(Image.fromarray(np.full((4, 4), 90, np.uint8), mode="L"), 4)
    assert (gray == 90).all()  # gray repeated to 3 channels


def test_resized_with_lanczos_to_the_requested_size():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
    source = Image.fromarray(pixels, mode="RGB")
    image = square_on_white(source, 16)
    square = Image.new("RGB", (40, 40), (255, 255, 255))
    square.paste(source, (10, 0))
    expected = np.asarray(square.resize((16, 16), Image.LANCZOS)).transpose(2, 0, 1)
    assert image.shape == (3, 16, 16)
    np.testing.assert_array_equal(image, expected)
    assert not np.array_equal(image, np.asarray(square.resize((16, 16), Image.BILINEAR)).transpose(2, 0, 1))
