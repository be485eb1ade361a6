"""Whether bytes are an image, by their signature, or base64 text of one: how the sidecar finds images
whatever type a request declares (:class:`service.extract.ImageFinder`).

Signatures, not parsing: PNG, JPEG, GIF, BMP, TIFF, WebP, PNM, ICO, JPEG 2000,
HEIF/AVIF, QOI, PSD, SVG. Formats with no signature (e.g. TGA) cannot be
sniffed: README says so. A base64 text is checked on its first
:data:`SNIFF_HEAD` characters before the whole of it is decoded.
"""

from __future__ import annotations

import base64
import binascii
import re

SNIFF_HEAD = 64  # base64 characters decoded to look for a signature (48 bytes)
BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})
BASE64 = re.compile(rb"[A-Za-z0-9+/_-]+={0,2}")
WHITESPACE = re.compile(rb"\s+")


def is_image_bytes(data: bytes) -> bool:
    """Whether ``data`` starts like an image file (magic numbers; SVG by its root element)."""
    head = data[:32]
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")):
        return True
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in BMP_HEADER_SIZES:
        return True
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return True
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n":
        return True  # PBM/PGM/PPM/PAM
    if head.startswith((b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")) and len(head) >= 6 and head[4:6] != b"\x00\x00":
        return True  # ICO/CUR with at least one entry
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return True  # JPEG 2000 file / codestream
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return True
    if head.startswith((b"qoif", b"8BPS")):
        return True
    text = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith(b"<") and b"<svg" in text


def from_base64(text: bytes) -> bytes | None:
    """The image ``text`` encodes in base64 (or as a ``data:`` URL), or None when it encodes none."""
    value = text.strip()
    if value[:5].lower() == b"data:":
        value = value.partition(b",")[2]
    if len(value) < 16:
        return None
    if WHITESPACE.search(value):
        value = WHITESPACE.sub(b"", value)  # MIME line breaks
    if not BASE64.fullmatch(value):
        return None
    urlsafe = b"-" in value or b"_" in value
    decode = base64.urlsafe_b64decode if urlsafe else base64.b64decode
    head = value[: SNIFF_HEAD - SNIFF_HEAD % 4]
    try:
        if not is_image_bytes(decode(head + b"=" * (-len(head) % 4))):
            return None
        return decode(value.rstrip(b"=") + b"=" * (-len(value.rstrip(b"=")) % 4))
    except (binascii.Error, ValueError):
        return None


def sniffed(data: bytes) -> list[bytes]:
    """``data`` itself if it is image bytes, else the image its base64 encodes, else nothing."""
    if is_image_bytes(data):
        return [data]
    blob = from_base64(data)
    return [] if blob is None else [blob]
