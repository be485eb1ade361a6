"""Images out of request bodies: the one module REST, the Open Inference Protocol and the sidecar read them with.

Two ways of reading, one set of parsers (the multipart parser, strict base64):

- **The contract readers** (``POST /score``, ``/v2``): the declared type says
  what the body is, and anything else is the client's 4xx.
  :func:`form_images` (``files`` parts of ``multipart/form-data``),
  :func:`json_images` (``{"images": [{"b64": ...}]}``), :func:`npy_array`
  (``.npy``), :func:`base64_bytes` (also v2's ``BYTES`` elements), and
  :func:`multipart_part_count` to refuse an overloaded server's requests before
  the parse.
- **The search** (:class:`ImageFinder`, the sidecar's gate: only as good as
  this search). The upstream decides what it reads, not the ``Content-Type``
  the client chose: an MNIST PNG in a multipart part typed ``text/plain``, or as
  a raw body sent as ``text/plain``, as form-urlencoded or with no type at
  all, is still a PNG to a classifier that calls ``Image.open`` on whatever it
  gets. So the search does not trust declared types. It looks at the bytes:

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

Both read multipart with :func:`multipart_parts` (python-multipart, the parser
starlette uses), on the body already read under the size limit, and both
refuse a body cut short before its closing boundary: parsers disagree on what
such a body holds, and the part it cuts would otherwise be lost without a word.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import math
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

import numpy as np
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .api.body import load_json
from .errors import ServiceError, bad_request, too_large
from .sniff import from_base64, sniffed

MAX_DEPTH = 3  # multipart inside multipart inside multipart: deeper is refused
DECLARED_IMAGE = ("image/", "application/octet-stream")


def base64_bytes(value, message: str, index: int | None = None) -> bytes:
    """Strict base64 (RFC 4648 alphabet, padding checked, nothing else); anything else is 400 ``bad_base64``."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise bad_request("bad_base64", message, index) from None


def strict_base64(value, where: str, index: int) -> bytes:
    """A string the configuration says is a base64 image: anything else is the client's error."""
    if not isinstance(value, str):
        raise bad_request("bad_json_image", f"image {index} at {where} is not a base64 string", index)
    if value.startswith("data:"):
        value = value.partition(",")[2]
    return base64_bytes(value, f"image {index} at {where} is not valid base64", index)


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


class ImageFinder:
    """Searches one request body (and its query) for images, with the sidecar's settings."""

    def __init__(self, json_path: str, max_part_bytes: int, max_parts: int) -> None:
        self.json_path = json_path
        self.max_part_bytes = max_part_bytes
        self.max_parts = max_parts  # of one multipart body (settings.sidecar_max_multipart_parts)

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
        parts = multipart_parts(boundary, data, self.max_part_bytes, self.max_parts, too_many_parts)
        for headers, content in parts:
            part_type = headers.get(b"content-type", b"").decode("latin-1")
            _, params = disposition(headers)
            is_file = b"filename" in params or b"filename*" in params
            kind = part_type.split(";")[0].strip().lower()
            if kind.startswith(DECLARED_IMAGE) or (is_file and not kind):
                found.append(content)
            else:
                found.extend(self.body_images(part_type, content, depth + 1))
        return found


# ---- multipart, for both readers ------------------------------------------------------------------

Part = tuple[dict[bytes, bytes], bytes]  # lower-cased header names -> values, raw content bytes


def too_many_parts(limit: int) -> ServiceError:
    return bad_request("bad_multipart", f"more than {limit} multipart parts")


def disposition(headers: dict[bytes, bytes]) -> tuple[bytes, dict[bytes, bytes]]:
    """A part's ``Content-Disposition``: its value and its parameters (``name``, ``filename``, ...)."""
    return parse_options_header(headers.get(b"content-disposition", b""))


def multipart_parts(
    boundary: bytes, data: bytes, max_part_bytes: int, max_parts: int, too_many: Callable[[int], ServiceError]
) -> list[Part]:
    """Each part's headers and raw content bytes, by python-multipart (the parser starlette uses).

    More than ``max_parts`` parts raises ``too_many(max_parts)``; a part past
    ``max_part_bytes``, a malformed body or one cut short before its closing boundary: 400 ``bad_multipart``.
    """
    parts: list[Part] = []
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
        if len(content) > max_part_bytes:
            raise bad_request("bad_multipart", "a multipart part passes the body size limit")

    def on_part_end():
        if len(parts) >= max_parts:
            raise too_many(max_parts)
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


def boundary_of(content_type: str) -> bytes | None:
    _, options = parse_options_header(content_type or "")
    return options.get(b"boundary") or None


# ---- the contract readers: POST /score and /v2 ---------------------------------------------------

FILES_FIELD = "files"  # the multipart parts of POST /score that hold its images


def multipart_part_count(content_type: str, body: bytes) -> int:
    """How many parts a multipart body holds, by counting its delimiters (no parsing); 1 if unsure.

    An upper bound on its images, cheap enough to refuse an overloaded server's requests
    before the full parse (which costs more than the refusal is worth).
    """
    boundary = content_type.partition("boundary=")[2].split(";", 1)[0].strip('" ')
    if not boundary:
        return 1
    delimiter = boundary.encode("latin-1")
    return max(1, body.count(b"\r\n--" + delimiter) + body.startswith(b"--" + delimiter) - 1)


def form_images(content_type: str, body: bytes, max_images: int, max_part_bytes: int) -> list[bytes]:
    """The ``files`` parts of a ``multipart/form-data`` body, in order.

    At most ``max_images`` file parts and as many other fields (413 ``too_many_images``
    past either, as starlette's ``max_files``/``max_fields`` gave); every part needs a
    ``name``; a ``files`` part without a filename is 400 ``not_a_file``.
    """
    boundary = boundary_of(content_type)
    if boundary is None:
        raise bad_request("bad_multipart", "malformed multipart body: no boundary in its Content-Type")

    def too_many(limit: int) -> ServiceError:
        return too_large("too_many_images", f"more than {limit} multipart parts (images per request)")

    files, fields, blobs = 0, 0, []
    for headers, content in multipart_parts(boundary, body, max_part_bytes, 2 * max_images, too_many):
        _, options = disposition(headers)
        if b"name" not in options:
            raise bad_request("bad_multipart", 'malformed multipart body: a part has no Content-Disposition "name"')
        is_file = b"filename" in options
        files, fields = files + is_file, fields + (not is_file)
        if files > max_images or fields > max_images:
            kind = "files" if is_file else "fields"
            raise too_large(
                "too_many_images", f"Too many {kind}. Maximum number of {kind} is {max_images}. (images per request)"
            )
        if options[b"name"].decode("latin-1") == FILES_FIELD:
            if not is_file:
                index = len(blobs)
                raise bad_request("not_a_file", f"part {index} of 'files' has no filename; send it as a file", index)
            blobs.append(content)
    if not blobs:
        raise bad_request("no_images", "the multipart body has no 'files' parts")
    return blobs


def json_images(body: bytes) -> list[bytes]:
    """``{"images": [{"b64": "..."}, ...]}``, at least one image."""
    document = load_json(body, "the body")
    items = document.get("images") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        raise bad_request("no_images", 'send {"images": [{"b64": "..."}, ...]} with at least one image')
    blobs = []
    for index, item in enumerate(items):
        data = item.get("b64") if isinstance(item, dict) else None
        if not isinstance(data, str):
            raise bad_request("bad_json", f'image {index} is not {{"b64": "<base64 string>"}}', index)
        blobs.append(base64_bytes(data, f"image {index} is not valid base64", index))
    return blobs


NPY_MAGIC = b"\x93NUMPY"
NPY_MAX_HEADER = 10000


@functools.lru_cache(maxsize=64)
def _npy_header(prefix: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """Parse a .npy header once: a client sending one shape sends the same header bytes every time.

    ``numpy``'s own parser (``ast.literal_eval`` of the header) stood out in py-spy
    profiles of one-image requests; the result depends only on these bytes, so it is cached.
    """
    stream = io.BytesIO(prefix)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=NPY_MAX_HEADER)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=NPY_MAX_HEADER)
    return dtype, shape, fortran, stream.tell()


def npy_array(body: bytes) -> np.ndarray:
    """A ``.npy`` body as an array (a read-only view of ``body``); pickled object arrays are refused."""
    try:
        if body[:6] != NPY_MAGIC or body[6] not in (1, 2, 3):
            raise ValueError("no .npy magic string (\\x93NUMPY) with a known version")
        size_bytes = 2 if body[6] == 1 else 4
        header_len = int.from_bytes(body[8 : 8 + size_bytes], "little")
        if header_len > NPY_MAX_HEADER:
            raise ValueError(f"header of {header_len} bytes is too long")
        dtype, shape, fortran, offset = _npy_header(bytes(body[: 8 + size_bytes + header_len]))
        if dtype.hasobject:
            raise ValueError("object arrays need pickle, which is refused")
        count = math.prod(shape)
        if len(body) - offset != count * dtype.itemsize:
            raise ValueError(f"{len(body) - offset} data bytes for shape {shape} of {dtype} ({count * dtype.itemsize})")
        return np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(
            shape, order="F" if fortran else "C"
        )
    except Exception as exc:  # noqa: BLE001 - anything that is not a plain .npy array is a malformed body
        raise bad_request("bad_npy", f"the body is not a .npy array (pickled arrays are refused): {exc}") from None
