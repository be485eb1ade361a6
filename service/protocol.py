"""uvicorn's httptools protocol with the limits it lacks: header size, header count, header deadline.

uvicorn bounds neither the bytes of a request's head (the issue sent 128 MB of
headers; the parser buffered them all while health probes stalled) nor the time a
client may take to send it (a client sending one byte per second held a
connection for ever). Both are checked here, per connection, before any request
reaches the app:

* more than ``max_header_bytes`` received while the head is incomplete, or more
  than ``max_header_count`` header lines: ``431`` and the connection is closed;
* the head not complete ``header_timeout_s`` after the connection opened or its
  first byte arrived: ``408`` and the connection is closed (an idle keep-alive
  connection is closed by uvicorn's own ``timeout_keep_alive`` instead).

Answers are written raw (the app never saw the request) in DESIGN.md's error form.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings

# at exit, how long a connection between requests may still deliver one (see shutdown); long enough for a
# client thread descheduled on a busy machine, short against shutdown_grace_s
LINGER_S = 1.0
# after refusing a request head, how long the rest of what the client sends is read and dropped
REFUSAL_LINGER_S = 1.0
REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large"}


def raw_error(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "index": None}}).encode()
    head = (
        f"HTTP/1.1 {status} ".encode()
        + REASONS[status]
        + b"\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    return head + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """One connection; class attributes are set by :func:`protocol_class` from the settings."""

    max_header_bytes = 64 * 1024
    max_header_count = 100
    header_timeout_s = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = False
        self._refusal: tuple[int, str, str] | None = None  # answered already: what still comes is dropped
        self._parser_stop: tuple[int, str, str] | None = None
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._refusal or self.transport.is_closing() or not (self._in_head or self.cycle is None):
            return
        message = f"the request line and headers did not arrive within {self.header_timeout_s:g} s"
        self._refuse(408, "header_timeout", message)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer, then close gently: closing with the client's bytes unread would reset the connection and
        could wipe the answer from its buffer, so what still comes is dropped for up to ``REFUSAL_LINGER_S``."""
        self.logger.warning("refused a request head: %s", message)
        self._cancel_head_timer()
        self._refusal = (status, code, message)
        self.transport.write(raw_error(status, code, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(REFUSAL_LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def eof_received(self):
        if self._refusal is not None:
            self.transport.close()
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None or self.transport.is_closing():
            return  # refused: dropped unread
        super().data_received(data)
        if self._in_head and self._refusal is None and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse(431, "headers_too_large", f"request line and headers pass {self.max_header_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        if self._parser_stop is not None:  # our own callback stopped the parser: answer with our status
            self._refuse(*self._parser_stop)
            return
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(self.headers) > self.max_header_count:
            self._parser_stop = (431, "too_many_headers", f"more than {self.max_header_count} header lines")
            raise ValueError(self._parser_stop[2])  # stops the parser; send_400_response answers with 431

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def shutdown(self) -> None:
        """Called at exit. A connection between requests is not cut at once: its client may be sending
        right now (a fresh connection's first request is often already on the wire). It gets
        ``LINGER_S`` to do so (that request is answered 503 + ``Connection: close``), then it is closed."""
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(LINGER_S, self._close_if_idle)
        else:
            super().shutdown()

    def _close_if_idle(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False


def protocol_class(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """A protocol class carrying ``settings``' limits (uvicorn instantiates it per connection)."""
    return type(
        "OodgateHttpProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "max_header_count": settings.max_header_count,
            "header_timeout_s": settings.header_timeout_s,
        },
    )
