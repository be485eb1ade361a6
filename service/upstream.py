"""The sidecar's upstream: forwarding a request to the classifier and relaying its answer.

The sidecar forwards with one pooled ``httpx.AsyncClient`` for the life of the app:
method, path (normalised, still percent-encoded as sent), query, body and end-to-end headers go through;
hop-by-hop headers (RFC 9110 7.6.1, plus any the ``Connection`` header names)
are dropped both ways; ``X-Forwarded-*`` are added; ``X-OOD*`` headers from
the client are removed, so they can be trusted downstream. The upstream's
status, headers and body bytes come back untouched (``Date``/``Server`` are
set by our own server; the body is buffered, fine for classifier answers, up to
``max_upstream_response_bytes``: a larger answer is not relayed, the client gets 502 ``upstream_too_large``).
Upstream unreachable gives 502, upstream too slow 504,
each a JSON error naming which. No cookie jar: the client never carries one
caller's cookies to another.
"""

from __future__ import annotations

import http.cookiejar
import logging
import time
from collections.abc import Callable

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .metrics import Metrics
from .settings import Settings

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# recomputed for the new message (``x-forwarded-for`` gets the client appended), or set by our own server
# (``expect``: the body is already read here, a 100-continue handshake upstream would only stall)
REQUEST_DROP = frozenset({"host", "content-length", "expect", "x-forwarded-for"})
RESPONSE_DROP = frozenset({"content-length", "date", "server"})


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that keeps nothing: a shared proxy client must not replay one caller's cookies to the next."""

    def set_cookie(self, cookie) -> None:  # noqa: D102
        return None

    def extract_cookies(self, response, request) -> None:  # noqa: D102
        return None


def hop_by_hop(headers: list[tuple[bytes, bytes]]) -> set[str]:
    """The fixed hop-by-hop set plus every header the ``Connection`` header names."""
    names = set(HOP_BY_HOP)
    for key, value in headers:
        if key.lower() == b"connection":
            names.update(token.strip().lower() for token in value.decode("latin-1").split(",") if token.strip())
    return names


def is_ood_header(name: bytes) -> bool:
    name = name.lower()
    return name == b"x-ood" or name.startswith(b"x-ood-")


class Upstream:
    """One pooled client to ``settings.upstream`` for the life of the app."""

    def __init__(self, settings: Settings, metrics: Metrics, on_outcome: Callable[[str], None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on_outcome = on_outcome  # the sidecar counts forwarded / upstream_* outcomes under its policy
        self.base = httpx.URL(settings.upstream)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.upstream_timeout_s, connect=settings.upstream_connect_timeout_s),
            limits=httpx.Limits(
                max_connections=settings.upstream_max_connections,
                max_keepalive_connections=settings.upstream_max_connections,
            ),
            follow_redirects=False,
            trust_env=False,
        )
        self.client.headers.clear()  # no default Accept-Encoding/User-Agent: send what the client sent
        self.client.cookies.jar = _NoCookies()  # (the constructor would copy a jar into a normal one)

    async def aclose(self) -> None:
        await self.client.aclose()

    def url(self, request: Request, raw_path: bytes) -> httpx.URL:
        query = request.scope.get("query_string", b"")
        prefix = self.base.raw_path.split(b"?")[0].rstrip(b"/")
        return self.base.copy_with(raw_path=prefix + raw_path + (b"?" + query if query else b""))

    @staticmethod
    def request_headers(request: Request, ood: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        raw = request.headers.raw
        drop = hop_by_hop(raw) | REQUEST_DROP
        headers = [(k, v) for k, v in raw if k.lower().decode("latin-1") not in drop and not is_ood_header(k)]
        client = request.client.host if request.client else ""
        previous = request.headers.get("x-forwarded-for")
        headers.append((b"x-forwarded-for", (f"{previous}, {client}" if previous else client).encode("latin-1")))
        if "x-forwarded-proto" not in request.headers:
            headers.append((b"x-forwarded-proto", request.url.scheme.encode()))
        if "x-forwarded-host" not in request.headers and "host" in request.headers:
            headers.append((b"x-forwarded-host", request.headers["host"].encode("latin-1")))
        headers.extend(ood)
        return headers

    async def forward(self, request: Request, raw_path: bytes, body: bytes, ood: list[tuple[bytes, bytes]]) -> Response:
        """Send the request on to ``raw_path`` (its normal form) with ``ood`` headers added; relay the answer,
        with the same headers added. The outcome is counted (``on_outcome``), each failure a JSON error."""
        outgoing = self.client.build_request(
            request.method, self.url(request, raw_path), headers=self.request_headers(request, ood), content=body
        )
        began = time.perf_counter()
        try:
            upstream = await self.client.send(outgoing, stream=True)
            try:
                content = await read_capped(upstream, self.settings.max_upstream_response_bytes)
            finally:
                await upstream.aclose()
        except UpstreamTooLarge as exc:
            self.on_outcome("upstream_too_large")
            return self.upstream_error(502, "upstream_too_large", str(exc))
        except httpx.TimeoutException as exc:
            self.on_outcome("upstream_timeout")
            return self.upstream_error(
                504, "upstream_timeout", f"the upstream {self.settings.upstream} did not answer in time ({exc!r})"
            )
        except httpx.TransportError as exc:
            self.on_outcome("upstream_unreachable")
            return self.upstream_error(
                502, "upstream_unreachable", f"cannot reach the upstream {self.settings.upstream}: {exc!r}"
            )
        self.metrics.sidecar_upstream_duration.observe(time.perf_counter() - began)
        self.on_outcome("forwarded")
        drop = hop_by_hop(upstream.headers.raw) | RESPONSE_DROP
        response = Response(content=content, status_code=upstream.status_code)
        response.raw_headers = [h for h in response.raw_headers if h[0] == b"content-length"] + [
            (k.lower(), v) for k, v in upstream.headers.raw if k.lower().decode("latin-1") not in drop
        ]
        response.raw_headers.extend(ood)
        return response

    @staticmethod
    def upstream_error(status: int, code: str, message: str) -> JSONResponse:
        log.warning("sidecar: %s", message)
        return JSONResponse({"error": {"code": code, "message": message, "index": None}}, status_code=status)


class UpstreamTooLarge(Exception):
    """The upstream's answer passes ``max_upstream_response_bytes``: it is not relayed (502)."""


async def read_capped(upstream: httpx.Response, limit: int) -> bytes:
    """The upstream's body as sent, refused once it passes ``limit`` bytes (declared or counted), so one
    huge answer cannot take the sidecar's memory: at most ``limit`` bytes are ever held for it."""
    declared = upstream.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UpstreamTooLarge(f"the upstream's answer declares {declared} bytes; the limit is {limit}")
    chunks, total = [], 0
    async for chunk in upstream.aiter_raw():
        total += len(chunk)
        if total > limit:
            raise UpstreamTooLarge(f"the upstream's answer passes the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
