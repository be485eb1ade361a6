"""``oodgate-serve``'s shutdown (service/cli.py): nothing lost on SIGTERM, exit in budget whatever clients do."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time

import httpx
import pytest

from service.cli import shutdown_budget_s
from service.settings import Settings

from .serving import free_port, multipart_files, npy, random_images, wait_ready
from .test_process import start, stop

pytestmark = pytest.mark.slow


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length framed) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def slow_server(root, port: int, seconds: float, **overrides):
    args = [
        sys.executable,
        "-m",
        "tests.service.slow_server",
        str(root),
        str(port),
        str(seconds),
        json.dumps(overrides),
    ]
    return start(args, {})


def wait_inflight(url: str, count: int) -> None:
    end = time.monotonic() + 10
    while f'oodgate_inflight_requests{{endpoint="/score"}} {count}.0' not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < end, "the request never became in flight"
        time.sleep(0.01)


def test_a_keep_alive_client_sending_after_a_draining_503_loses_nothing(tiny_models_root):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = slow_server(tiny_models_root, port, 0.5, drain_timeout_s=20)
    results: list[httpx.Response] = []
    try:
        wait_ready(url, proc=proc)
        busy = threading.Thread(  # 3 batches of 2 images, 0.5 s each: keeps the drain open for ~1.5 s
            target=lambda: results.append(
                httpx.post(f"{url}/score", files=multipart_files(random_images(6)), timeout=60)
            )
        )
        busy.start()
        wait_inflight(url, 1)
        keep_alive = socket.create_connection(("127.0.0.1", port), timeout=10)
        keep_alive.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(keep_alive)[0] == 200  # a connection opened, and idle, before the drain
        proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 10
        while httpx.get(f"{url}/v2/health/ready").status_code == 200:
            assert time.monotonic() < end
            time.sleep(0.01)
        body = npy(random_images(1)[:, 0])
        request = (
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        keep_alive.sendall(request)
        status, headers, answer = read_response(keep_alive)
        assert status == 503 and json.loads(answer)["error"]["code"] == "draining"
        assert headers.get("connection") == "close"  # the client knows not to send its next request here...
        assert keep_alive.recv(1) == b""  # ...and the server closes it: nothing can be sent into the void
        keep_alive.close()
        with httpx.Client(base_url=url, timeout=10) as client:  # a pooled client sending back to back
            answers = [
                client.post("/score", content=body, headers={"content-type": "application/x-npy"}) for _ in range(3)
            ]
        assert [a.status_code for a in answers] == [503, 503, 503]
        assert all(a.headers["connection"] == "close" for a in answers)
        busy.join(60)
        code, output = stop(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r.status_code for r in results] == [200]  # in flight at SIGTERM: answered in full
    assert code == 0, output


def test_slow_clients_are_cut_and_do_not_hold_the_exit_past_the_budget(tiny_models_root):
    settings = {"drain_timeout_s": 4, "shutdown_grace_s": 1, "body_idle_timeout_s": 1, "header_timeout_s": 0.5}
    budget = shutdown_budget_s(Settings(**settings))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = slow_server(tiny_models_root, port, 0.0, **settings)
    sockets: list[socket.socket] = []
    try:
        wait_ready(url, proc=proc)
        slow_body = socket.create_connection(("127.0.0.1", port), timeout=10)
        slow_body.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\nContent-Length: 1000\r\n\r\n"
        )
        slow_head = socket.create_connection(("127.0.0.1", port), timeout=10)
        slow_head.sendall(b"POST /score HTTP/1.1\r\n")
        sockets += [slow_body, slow_head]
        wait_inflight(url, 1)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        def trickle(sock):  # one byte per 0.3 s until the server gives up on it
            try:
                while proc.poll() is None:
                    sock.sendall(b"x")
                    time.sleep(0.3)
            except OSError:
                pass

        trickles = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in sockets]
        for t in trickles:
            t.start()
        output, _ = proc.communicate(timeout=60)  # no second signal: that would force the exit
        code, took = proc.returncode, time.monotonic() - signalled
        body_status, body_headers, _ = read_response(slow_body)
        head = slow_head.recv(65536)
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in sockets:
            s.close()
    assert code == 0, output
    assert body_status == 408 and body_headers["connection"] == "close"  # the body deadline cut it
    # the header deadline cut it, or the exit closed it first: its request was never complete, so never accepted
    assert head == b"" or head.startswith(b"HTTP/1.1 408 "), head
    assert took < budget, f"exit took {took:.1f} s; the budget is {budget:g} s"
    assert took < 1 + 1 + 1.5  # the slow body was cut after ~1 s, so the drain ended then, not at its 4 s bound
