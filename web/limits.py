"""What one client may take from the panel's process: connections are capped and must send a
request head in time, so no client can use up the file descriptors that training needs.

- Header deadline: a connection must deliver a complete request head within
  WEB_IDLE_TIMEOUT_S of connecting (empty or slow connections are closed); between requests
  aiohttp's keep-alive timeout (the same value) closes an idle connection, or one that has sent
  only part of its next head. A request being answered (an SSE stream included) is never timed
  out here.
- Cap: at most `max_connections` open at once, SSE streams included. One beyond it gets a 503 and
  is closed before the next is accepted; the rest wait in the kernel's listen backlog, which costs
  this process no descriptor.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from vsr_async.settings import Config

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 256  # far more than a few browser tabs and scripts need
DESCRIPTOR_SHARE = 4  # connections may hold at most 1/4 of RLIMIT_NOFILE; the rest is training's
MIN_CONNECTIONS = 8
LISTEN_BACKLOG = 128  # connections the kernel queues for us (they cost this process nothing)
ACCEPT_RETRY_S = 1.0  # after a failed accept (the process is out of descriptors), as asyncio does
REPORT_EVERY_S = 60.0  # refused and timed-out connections: one summary line at most this often
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 35\r\n\r\n"
    b"too many connections to this panel\n"
)


@dataclass(frozen=True)
class ConnectionLimits:
    """The two bounds; see the module docstring."""

    max_connections: int
    header_timeout_s: float

    @classmethod
    def from_config(cls, config: Config) -> ConnectionLimits:
        configured = int(config.WEB_MAX_CONNECTIONS)
        return cls(
            max_connections=configured or auto_max_connections(),
            header_timeout_s=float(config.WEB_IDLE_TIMEOUT_S),
        )


def auto_max_connections() -> int:
    """A quarter of this process's descriptor limit, at most DEFAULT_MAX_CONNECTIONS: 256 with the
    usual `ulimit -n` of 1024, so three quarters always stay for data, checkpoints and logs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(DEFAULT_MAX_CONNECTIONS, soft // DESCRIPTOR_SHARE))


class ConnectionReport:
    """Counts refused and timed-out connections; logs them as one line at most every
    REPORT_EVERY_S, so that a flood of connections is not also a flood of log lines."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.refused = 0  # totals over the run
        self.timed_out = 0
        self.accept_errors = 0
        self._unreported = {"refused": 0, "timed_out": 0, "accept_errors": 0}
        self._last_error = ""
        self._last_report = -REPORT_EVERY_S

    def count(self, *, refused: int = 0, timed_out: int = 0, accept_error: str = "") -> None:
        self.refused += refused
        self.timed_out += timed_out
        self.accept_errors += bool(accept_error)
        self._unreported["refused"] += refused
        self._unreported["timed_out"] += timed_out
        self._unreported["accept_errors"] += bool(accept_error)
        self._last_error = accept_error or self._last_error
        now = time.monotonic()
        if now - self._last_report >= REPORT_EVERY_S:
            self._last_report = now
            self.flush()

    def flush(self) -> None:
        counts = self._unreported
        if counts["refused"] or counts["timed_out"]:
            log.warning(
                "web panel: %d connection(s) refused at the limit of %d open, %d closed for "
                "sending no complete request head within %g s (summed up at most every %g s)",
                counts["refused"],
                self.limits.max_connections,
                counts["timed_out"],
                self.limits.header_timeout_s,
                REPORT_EVERY_S,
            )
        if counts["accept_errors"]:
            log.warning(
                "web panel: %d connection(s) could not be accepted (%s); trying again in %g s",
                counts["accept_errors"],
                self._last_error,
                ACCEPT_RETRY_S,
            )
        self._unreported = dict.fromkeys(counts, 0)


class BoundedServer(web.Server):
    """aiohttp's low-level server plus the header deadline; `open_connections` feeds the cap.

    Hooks: `connection_made`/`connection_lost` (every RequestHandler reports to its server) and
    the request factory, which the handler calls once a complete request head has been parsed.
    """

    def __init__(self, handler: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=limits.header_timeout_s, **kwargs)
        self.limits = limits
        self.report = ConnectionReport(limits)
        self._deadlines: dict[RequestHandler, asyncio.TimerHandle] = {}
        make_request = self.request_factory

        def request_arrived(message: Any, payload: Any, protocol: Any, *args: Any) -> Any:
            deadline = self._deadlines.pop(protocol, None)
            if deadline is not None:
                deadline.cancel()
            return make_request(message, payload, protocol, *args)

        self.request_factory = request_arrived

    @property
    def open_connections(self) -> int:
        """Connections not yet fully closed (one that is closing still counts)."""
        return len(self._connections)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._deadlines[handler] = self._loop.call_later(
            self.limits.header_timeout_s, self._head_overdue, handler
        )

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        deadline = self._deadlines.pop(handler, None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(handler, exc)

    def _head_overdue(self, handler: RequestHandler) -> None:
        if self._deadlines.pop(handler, None) is not None:
            handler.force_close()
            self.report.count(timed_out=1)

    async def shutdown(self, timeout: float | None = None) -> None:
        for deadline in self._deadlines.values():
            deadline.cancel()
        self._deadlines.clear()
        self.report.flush()
        await super().shutdown(timeout)


class BoundedAppRunner(web.AppRunner):
    """An AppRunner whose server is a BoundedServer (same app lifecycle, same request path).
    It has no sites: a BoundedListener feeds it connections."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> BoundedServer:
        plain = await super()._make_server()  # runs the app's startup, builds aiohttp's server
        return BoundedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            limits=self.limits,
            **self._kwargs,
        )


class BoundedListener:
    """Binds host:port and accepts connections itself, one at a time, into a BoundedServer.

    asyncio's own accept loop (`loop.create_server`, so aiohttp's TCPSite) takes up to `backlog`
    sockets per loop pass and closes a refused one only passes later, so a flood holds hundreds
    of descriptors however early it is refused. Here a socket beyond the cap is closed before the
    next one is accepted: the panel holds at most `max_connections` + 1 connection sockets.
    """

    def __init__(self, server: BoundedServer) -> None:
        self.server = server
        self.sockets: list[socket.socket] = []
        self._tasks: list[asyncio.Task[None]] = []

    def serve(self, sockets: list[socket.socket]) -> None:
        """Accept on listening sockets from `bind_sockets`; they are closed by `stop()`."""
        self.sockets = sockets
        self._tasks = [
            asyncio.create_task(self._accept_forever(sock), name="web-accept")
            for sock in self.sockets
        ]

    @property
    def addresses(self) -> list[Any]:
        return [sock.getsockname() for sock in self.sockets]

    async def stop(self) -> None:
        """Stop accepting; connections already open are closed by the runner's cleanup."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    async def _accept_forever(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE, ENOBUFS: short of something; never end the panel
                self.server.report.count(accept_error=os_error_name(exc))
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if self.server.open_connections >= self.server.limits.max_connections:
                refuse(conn)
                self.server.report.count(refused=1)
                await asyncio.sleep(0)  # sock_accept need not yield: let the loop run
                continue
            try:
                await loop.connect_accepted_socket(self.server, conn)
            except OSError:  # the client left before its transport was made
                conn.close()


def os_error_name(exc: OSError) -> str:
    """How an accept failure is counted: its text, else its errno's name, else its class (an
    OSError need not carry an errno; looking None up must not end the accept loop)."""
    if exc.strerror:
        return exc.strerror
    if exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def refuse(conn: socket.socket) -> None:
    """A 503 if the socket takes it at once (never waits), then close."""
    try:
        conn.setblocking(False)
        conn.send(REFUSAL)
    except OSError:
        pass
    conn.close()


async def bind_sockets(host: str, port: int, backlog: int = LISTEN_BACKLOG) -> list[socket.socket]:
    """Listening non-blocking sockets on every address of `host` ("" = all interfaces), bound as
    asyncio binds them (SO_REUSEADDR; IPv6 sockets IPv6-only, so that 0.0.0.0 and :: can share
    a port). Errors are OSErrors (socket.gaierror for a host that cannot be resolved)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
