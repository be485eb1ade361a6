"""One normal form of a request path, so the path a rule matched is the path the upstream gets.

The sidecar decides on a path (``sidecar_paths``, pass-through rules, its own
routes) and then forwards it. If the two readings differ, a rule is walked
around: ``/predict/../admin`` matches ``/predict*`` but an upstream that
resolves dot segments serves ``/admin``. So a path is put in one form before
anything looks at it, and what cannot be put in a form every server reads the
same way is refused (400) rather than guessed:

- empty segments (``//``) collapse, as most servers do;
- dot segments (``.``, ``..``, also percent-encoded, also with ``;`` parameters
  as in ``..;``) are refused: no client that means well sends them, and
  servers resolve them differently;
- a segment that decodes to a separator (``%2F``, ``%5C``), a backslash, a NUL
  or another control character is refused: servers disagree on whether it splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .errors import bad_request

DOT_SEGMENTS = frozenset({b".", b".."})


@dataclass(frozen=True)
class NormalPath:
    """A path in normal form: ``decoded`` for matching rules, ``raw`` (still percent-encoded) for forwarding."""

    decoded: str
    raw: bytes


def normalise(raw_path: bytes) -> NormalPath:
    """``raw_path`` (as sent, percent-encoded, no query) in normal form; 400 ``bad_path`` when it has none."""
    if not raw_path.startswith(b"/"):
        raise bad_request("bad_path", "the request path must start with '/'")
    segments = raw_path.split(b"/")[1:]
    trailing = segments[-1] == b"" and len(segments) > 1
    kept_raw, kept_decoded = [], []
    for segment in segments:
        if not segment:
            continue  # '//' collapses
        decoded = unquote_to_bytes(segment)
        if decoded.split(b";", 1)[0] in DOT_SEGMENTS:
            raise bad_request("bad_path", "dot segments ('.', '..') are not allowed in the path")
        if any(byte < 0x20 or byte == 0x7F for byte in decoded) or b"/" in decoded or b"\\" in decoded:
            raise bad_request("bad_path", "the path holds an encoded separator, a backslash or a control character")
        kept_raw.append(segment)
        kept_decoded.append(decoded)
    raw = b"/" + b"/".join(kept_raw) + (b"/" if trailing and kept_raw else b"")
    decoded_path = b"/" + b"/".join(kept_decoded) + (b"/" if trailing and kept_decoded else b"")
    return NormalPath(decoded_path.decode("utf-8", "replace"), raw)
