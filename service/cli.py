"""``oodgate-serve``: run the service under uvicorn with a graceful SIGTERM.

uvicorn's own SIGTERM handling stops listening at once, so a request sent
during shutdown gets a refused connection and a load balancer that has not yet
noticed sees errors. Here the first SIGTERM (or Ctrl-C) only turns readiness
false: new scoring requests get 503 with ``Retry-After`` (so clients retry on
another replica), queued and in-flight requests finish, bounded by
``drain_timeout_s``; then uvicorn is told to exit and the process ends with
status 0. A second signal exits at once.

No request is lost on the way (issue 14): every answer given while draining
carries ``Connection: close`` (:mod:`service.limits`), so a keep-alive client's
next request goes out on a fresh connection instead of one about to be cut; and
the exit comes within :func:`shutdown_budget_s` whatever the clients do: slow
uploads are cut by the body deadlines, slow heads by the header deadline
(:mod:`service.protocol`), and after the drain uvicorn waits at most
``shutdown_grace_s`` for the last answers. ``k8s/deployment.yaml`` sizes
``terminationGracePeriodSeconds`` from that budget.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import struct
import sys
import time

import uvicorn

from .app import create_app
from .protocol import protocol_class
from .settings import Settings

log = logging.getLogger("service.cli")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app) -> None:
        super().__init__(config)
        self.oodgate_app = app
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self._draining or self._loop is None:
            self.should_exit = True
            self.force_exit = self._draining
            return
        self._draining = True
        plane = self.oodgate_app.state.dataplane
        timeout = self.oodgate_app.state.settings.drain_timeout_s
        log.info("signal %s: draining (up to %.0f s), then exiting", signal.Signals(sig).name, timeout)
        plane.begin_drain()

        async def drain_then_exit():
            await plane.drain(timeout)
            await quiesce_listeners(self.servers)
            self.should_exit = True

        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(drain_then_exit()))


# classic BPF on the listening socket (packets seen from the TCP header on): drop a SYN that opens a connection
# (SYN set, ACK not); pass everything else, so handshakes already under way still complete into the accept queue
DROP_NEW_SYNS = b"".join(
    struct.pack("HBBI", code, jt, jf, k)
    for code, jt, jf, k in (
        (0x30, 0, 0, 13),  # ldb [13]: the TCP flags byte
        (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
        (0x15, 0, 1, 0x02),  # jeq #SYN: next (drop), else skip it (pass)
        (0x06, 0, 0, 0),  # ret #0: drop
        (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: pass the whole packet
    )
)
INSTRUCTIONS = len(DROP_NEW_SYNS) // 8
HANDSHAKE_SETTLE_S = 0.05  # lets a handshake that began before the filter reach the accept queue
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
TCP_INFO_UNACKED = 24  # offset of tcpi_unacked, which for a listening socket is its accept queue length
QUIESCE_LIMIT_S = 1.0


async def quiesce_listeners(servers) -> None:
    """Stop taking new connections without resetting any the kernel already took, then return.

    Closing a listening socket resets the connections waiting in its accept queue
    or still in their handshake, whose clients may have sent a request already: lost
    requests. So first every new SYN is dropped (a socket filter; the client retries
    its SYN a second later, by then the port is closed and it sees a clean refusal),
    handshakes under way complete, then the queue is left to empty, which the event
    loop does by accepting (each such request is answered 503 + ``Connection:
    close``). Linux only; elsewhere the listener simply closes.
    """
    import ctypes

    listeners = [sock for server in servers for sock in (server.sockets or ())]
    program = ctypes.create_string_buffer(DROP_NEW_SYNS)  # kept alive until attached (the kernel copies it)
    fprog = struct.pack("HL", INSTRUCTIONS, ctypes.addressof(program))
    try:
        for sock in listeners:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.debug("cannot filter the listening sockets (%s); closing them as they are", exc)
        return
    await asyncio.sleep(HANDSHAKE_SETTLE_S)
    end = time.monotonic() + QUIESCE_LIMIT_S
    while time.monotonic() < end:
        try:
            queued = sum(
                struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), TCP_INFO_UNACKED)[0]
                for sock in listeners
            )
        except OSError:
            queued = 0
        if queued == 0:
            return
        await asyncio.sleep(0.01)


def shutdown_budget_s(settings: Settings) -> float:
    """Longest time from SIGTERM to exit: the drain, then uvicorn's grace for the last answers."""
    return settings.drain_timeout_s + settings.shutdown_grace_s


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    """uvicorn with the connection limits of ``settings`` (header size, count and deadline, keep-alive, load)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=protocol_class(settings),
        h11_max_incomplete_event_size=settings.max_header_bytes,  # the same bound, were h11 ever chosen
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        access_log=False,
    )


def serve(app, settings: Settings) -> None:
    """Serve ``app`` in this (main) thread until SIGTERM/SIGINT, draining first."""
    DrainingServer(uvicorn_config(app, settings), app).run()


def main(argv: list[str] | None = None) -> int:
    fields = Settings.model_fields
    parser = argparse.ArgumentParser(
        prog="oodgate-serve",
        description="Serve oodgate models. Every setting is also read from OODGATE_<NAME> (see service/settings.py).",
    )
    parser.add_argument("--host", help=fields["host"].description)
    parser.add_argument("--port", type=int, help=fields["port"].description)
    parser.add_argument("--models-root", help=fields["models_root"].description)
    parser.add_argument("--models", help=fields["models"].description)
    parser.add_argument("--runtime", choices=["auto", "onnx", "torchscript"], help=fields["runtime"].description)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help=fields["device"].description)
    parser.add_argument("--max-batch-size", type=int, help=fields["max_batch_size"].description)
    parser.add_argument("--max-batch-delay-ms", type=float, help=fields["max_batch_delay_ms"].description)
    parser.add_argument("--log-level", help=fields["log_level"].description)
    parser.add_argument("--upstream", help=fields["upstream"].description)
    parser.add_argument(
        "--sidecar-policy", choices=["block", "annotate", "shadow"], help=fields["sidecar_policy"].description
    )
    parser.add_argument("--sidecar-paths", help=fields["sidecar_paths"].description)
    parser.add_argument("--sidecar-model", help=fields["sidecar_model"].description)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
        app = create_app(settings)
    except Exception as exc:  # noqa: BLE001 - a start-up failure is reported, not a traceback
        print(f"oodgate-serve: {exc}", file=sys.stderr)
        return 2
    serve(app, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
