"""Find every image a request carries, wherever it hides: the sidecar's gate is only as good as this search.

The upstream decides what it reads, not the ``Content-Type`` the client chose:
an MNIST PNG in a multipart part typed ``text/plain``, or as a raw body sent
as ``text/plain``, as form-urlencoded or with no type at all, is still a PNG to
a classifier that calls ``Image.open`` on whatever it gets. So the search does
not trust declared types. It looks at the bytes:

- declared image parts and bodies (``image/*``, ``application/octet-stream``,
  file parts without a type) are images, whatever they hold (what does not
  decode is refused later, so nothing unreadable is waved through);
- every other body, part, form value, JSON string and query value is sniffed:
  raw bytes by their signature (PNG, JPEG, GIF, BMP, TIFF, WebP, PNM, ICO,
  JPEG 2000, HEIF/AVIF, QOI, PSD, SVG), text by whether it is base64 (or a
  ``data:`` URL) of such bytes;
- JSON is read with duplicate keys refused (parsers disagree on which one
  wins) and walked iteratively (depth costs no stack); the strings at
  ``sidecar_json_path`` must be base64 images, others are sniffed;
- multipart bodies are parsed part by part, with each part's raw bytes (not a
  text decoding of them), and nested multipart up to :data:`MAX_DEPTH` levels.

What cannot be parsed as declared raises a 400 naming the problem; the
sidecar refuses it in ``block`` mode. Formats with no signature (e.g. TGA)
cannot be sniffed: README says so.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote_to_bytes

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .api.body import load_json
from .errors import ServiceError, bad_request

MAX_DEPTH = 3  # multipart inside multipart inside multipart: deeper is refused
MAX_PARTS = 1000  # parts of one multipart body (starlette's own default for fields)
SNIFF_HEAD = 64  # base64 characters decoded to look for a signature (48 bytes)
BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})
BASE64 = re.compile(rb"[A-Za-z0-9+/_-]+={0,2}")
WHITESPACE = re.compile(rb"\s+")
DECLARED_IMAGE = ("image/", "application/octet-stream")


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


def strict_base64(value, where: str, index: int) -> bytes:
    """A string the configuration says is a base64 image: anything else is the client's error."""
    if not isinstance(value, str):
        raise bad_request("bad_json_image", f"image {index} at {where} is not a base64 string", index)
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("bad_base64", f"image {index} at {where} is not valid base64", index) from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    document = {}
    for key, value in pairs:
        if key in document:
            raise bad_request(
                "duplicate_key", f"the JSON object repeats the key {key!r}; parsers disagree on which wins"
            )
        document[key] = value
    return document


def parse_json(data: bytes):
    """JSON with duplicate keys and too-deep nesting refused as 400."""
    return load_json(data, "the JSON body", object_pairs_hook=_unique_keys)


def _path_matches(path: tuple, pattern: list[str]) -> bool:
    if len(path) != len(pattern):
        return False
    return all(p == "*" or p == str(key) for key, p in zip(path, pattern, strict=True))


def json_document_images(document, json_path: str) -> list[bytes]:
    """Every image in a parsed JSON document: strict at ``json_path``, sniffed everywhere else."""
    pattern = [key for key in json_path.split(".") if key]
    found: list[bytes] = []
    stack: list[tuple[tuple, object]] = [((), document)]
    while stack:
        path, node = stack.pop()
        if pattern and _path_matches(path, pattern):
            found.append(strict_base64(node, json_path, len(found)))
        elif isinstance(node, dict):
            stack.extend(((*path, key), value) for key, value in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend(((*path, i), value) for i, value in reversed(list(enumerate(node))))
        elif isinstance(node, str) and len(node) >= 16:
            blob = from_base64(node.encode("utf-8", "surrogatepass"))
            if blob is not None:
                found.append(blob)
    return found


def form_values(data: bytes) -> list[bytes]:
    """Values of an ``application/x-www-form-urlencoded`` body, percent-decoded to raw bytes (not text)."""
    values = []
    for pair in data.split(b"&"):
        _, sep, value = pair.partition(b"=")
        if sep:
            values.append(unquote_to_bytes(value.replace(b"+", b" ")))
    return values


def sniffed(data: bytes) -> list[bytes]:
    """``data`` itself if it is image bytes, else the image its base64 encodes, else nothing."""
    if is_image_bytes(data):
        return [data]
    blob = from_base64(data)
    return [] if blob is None else [blob]


class ImageFinder:
    """Searches one request body (and its query) for images, with the sidecar's settings."""

    def __init__(self, json_path: str, max_part_bytes: int) -> None:
        self.json_path = json_path
        self.max_part_bytes = max_part_bytes

    def find(self, content_type: str, body: bytes, query: bytes = b"") -> list[bytes]:
        found = self.body_images(content_type, body, 0) if body else []
        for value in form_values(query):
            found.extend(sniffed(value))
        return found

    def body_images(self, content_type: str, data: bytes, depth: int) -> list[bytes]:
        kind, options = parse_options_header(content_type or "")
        kind = kind.decode("latin-1").lower() if isinstance(kind, bytes) else str(kind).lower()
        if kind.startswith(DECLARED_IMAGE):
            return [data]
        if kind.startswith("multipart/"):
            return self.multipart_images(options.get(b"boundary"), data, depth)
        if kind == "application/json" or kind.endswith("+json"):
            return json_document_images(parse_json(data), self.json_path)
        found = sniffed(data)
        if found:
            return found
        if kind in ("", "application/x-www-form-urlencoded") or kind.startswith("text/"):
            for value in form_values(data):
                found.extend(sniffed(value))
            if data.lstrip()[:1] in (b"{", b"["):  # JSON sent with another type: some servers parse it anyway
                try:
                    document = parse_json(data)
                except ServiceError:
                    document = None
                if document is not None:
                    found.extend(json_document_images(document, self.json_path))
        return found

    def multipart_images(self, boundary: bytes | None, data: bytes, depth: int) -> list[bytes]:
        if depth >= MAX_DEPTH:
            raise bad_request("bad_multipart", f"multipart bodies nested more than {MAX_DEPTH} deep are refused")
        if not boundary:
            raise bad_request("bad_multipart", "multipart body without a boundary")
        found: list[bytes] = []
        for headers, content in self.parts(boundary, data):
            part_type = headers.get(b"content-type", b"").decode("latin-1")
            disposition = headers.get(b"content-disposition", b"")
            _, params = parse_options_header(disposition)
            is_file = b"filename" in params or b"filename*" in params
            kind = part_type.split(";")[0].strip().lower()
            if kind.startswith(DECLARED_IMAGE) or (is_file and not kind):
                found.append(content)
            else:
                found.extend(self.body_images(part_type, content, depth + 1))
        return found

    def parts(self, boundary: bytes, data: bytes) -> list[tuple[dict[bytes, bytes], bytes]]:
        """Each part's headers and raw content bytes, by python-multipart (the parser starlette uses)."""
        parts: list[tuple[dict[bytes, bytes], bytes]] = []
        headers: dict[bytes, bytes] = {}
        field, value, content = bytearray(), bytearray(), bytearray()
        ended = []

        def on_part_begin():
            headers.clear()
            content.clear()

        def on_header_field(chunk, start, end):
            field.extend(chunk[start:end])

        def on_header_value(chunk, start, end):
            value.extend(chunk[start:end])

        def on_header_end():
            headers[bytes(field).strip().lower()] = bytes(value).strip()
            field.clear()
            value.clear()

        def on_part_data(chunk, start, end):
            content.extend(chunk[start:end])
            if len(content) > self.max_part_bytes:
                raise bad_request("bad_multipart", "a multipart part passes the body size limit")

        def on_part_end():
            if len(parts) >= MAX_PARTS:
                raise bad_request("bad_multipart", f"more than {MAX_PARTS} multipart parts")
            parts.append((dict(headers), bytes(content)))

        callbacks = {
            "on_end": lambda: ended.append(True),
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
        }
        try:
            parser = MultipartParser(boundary, callbacks)
            parser.write(data)
            parser.finalize()
        except MultipartParseError as exc:
            raise bad_request("bad_multipart", f"malformed multipart body: {exc}") from None
        if not ended:  # parsers disagree on what a body cut short holds
            raise bad_request("bad_multipart", "the multipart body ends before its closing boundary")
        return parts
