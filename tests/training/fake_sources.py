"""Values and helpers behind the fake sources of ``conftest.py``."""

from PIL import Image

PICTOGRAPHS = [0x2600, 0x2601, 0x2602, 0x2603, 0x2605, 0x2614, 0x2665, 0x2666, 0x263A, 0x2708]
NOT_PICTOGRAPHS = [ord("1"), 0x1F3FB]  # a digit (Nd), a skin-tone modifier (Sk)
PRIVATE_USE = [0xE001, 0xE002, 0xF000]  # where icon fonts put their pictographs (Co)


def save_png(path, colour, side, alpha=255):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (side, side), tuple(colour) + (alpha,)).save(path)
    return path
