"""ASGI-level guards (service/limits.py): body deadlines, the body memory budget, Connection: close while draining."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from service.app import create_app

from .serving import LiveServer, settings
from .test_cli import read_response

LIMITS = {
    "body_idle_timeout_s": 0.5,
    "body_min_rate_bytes_s": 1000,
    "max_request_bytes": 100_000,
    "max_buffered_body_bytes": 150_000,
}
NPY = {"content-type": "application/x-npy"}


@pytest.fixture(scope="module")
def server(tiny_models_root):
    with LiveServer(create_app(settings(tiny_models_root, **LIMITS))) as live:
        yield live


def open_body(server, length: int, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
        + first
    )
    return sock


def test_a_stalled_body_gets_408_after_the_idle_timeout(server):
    began = time.monotonic()
    with open_body(server, 1000, b"x") as sock:
        status, headers, body = read_response(sock)
    took = time.monotonic() - began
    assert status == 408 and json.loads(body)["error"]["code"] == "body_timeout"
    assert headers["connection"] == "close"
    assert LIMITS["body_idle_timeout_s"] <= took < LIMITS["body_idle_timeout_s"] + 3


def test_a_one_byte_per_tick_body_is_cut_by_the_minimum_rate(server):
    began = time.monotonic()
    with open_body(server, 1000) as sock:
        sock.settimeout(0.1)
        answer = b""
        while not answer and time.monotonic() - began < 10:
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                sock.sendall(b"x")  # one byte every 0.1 s: never idle for 0.5 s, but 10 bytes/s << 1000
    took = time.monotonic() - began
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert took < LIMITS["body_idle_timeout_s"] + 3


def test_bodies_past_the_memory_budget_get_503_before_they_are_read(server):
    holder = open_body(server, 100_000, b"\x93NUMPY")  # holds 100 kB of the 150 kB budget while it stalls
    try:
        time.sleep(0.1)
        refused = httpx.post(f"{server.url}/score", content=b"x" * 100_000, headers=NPY)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "memory_budget"
        assert refused.headers["retry-after"]  # and no Connection: close: the unread body is dropped, not reset
        small = httpx.post(f"{server.url}/score", content=b"x" * 1000, headers=NPY)
        assert small.status_code == 400  # within the budget: read, and refused for what it is (not a .npy)
    finally:
        holder.close()
    end = time.monotonic() + 5  # the stalled body's share comes back once its request ends
    while httpx.post(f"{server.url}/score", content=b"x" * 100_000, headers=NPY).status_code == 503:
        assert time.monotonic() < end, "the budget was never given back"
        time.sleep(0.05)


def test_every_answer_while_draining_says_connection_close(tiny_models_root):
    with LiveServer(create_app(settings(tiny_models_root))) as live:
        assert "connection" not in httpx.get(f"{live.url}/v2/health/live").headers
        live.app.state.dataplane.begin_drain()
        for path in ("/v2/health/live", "/v2/health/ready", "/models"):
            assert httpx.get(f"{live.url}{path}").headers["connection"] == "close"
