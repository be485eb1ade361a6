"""Request-head limits of ``oodgate-serve``'s HTTP protocol (service/protocol.py), on a real loopback server."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from service.app import create_app

from .serving import CliLiveServer, settings
from .test_cli import read_response

LIMITS = {"max_header_bytes": 16 * 1024, "max_header_count": 20, "header_timeout_s": 0.5}


@pytest.fixture(scope="module")
def server(tiny_models_root):
    s = settings(tiny_models_root, **LIMITS)
    with CliLiveServer(create_app(s), s) as live:
        yield live


def exchange(server, head: bytes) -> tuple[int, dict, dict, float]:
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(head)
        except OSError:  # refused while still sending: the answer is in our buffer all the same
            pass
        status, headers, body = read_response(sock)
    return status, headers, json.loads(body), time.monotonic() - began


def test_headers_of_several_megabytes_get_431_at_once_and_the_server_serves_on(server):
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * 1024 * 1024) + b"\r\n\r\n"
    status, headers, body, took = exchange(server, head)
    assert status == 431 and body["error"]["code"] == "headers_too_large"
    assert headers["connection"] == "close"
    assert took < 5
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


def test_too_many_header_lines_get_431(server):
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(LIMITS["max_header_count"] + 1))
    status, _, body, _ = exchange(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert status == 431 and body["error"]["code"] == "too_many_headers"
    under = b"".join(b"X-H%d: v\r\n" % i for i in range(LIMITS["max_header_count"] - 2))
    status, _, _, _ = exchange(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + under + b"\r\n")
    assert status == 200


def test_a_head_that_never_completes_gets_408_after_the_header_timeout(server):
    status, headers, body, took = exchange(server, b"POST /score HTTP/1.1\r\nHost: x\r\n")
    assert status == 408 and body["error"]["code"] == "header_timeout"
    assert LIMITS["header_timeout_s"] <= took < LIMITS["header_timeout_s"] + 3
    status, _, body, took = exchange(server, b"")  # connected, never sent a byte
    assert status == 408 and took < LIMITS["header_timeout_s"] + 3
