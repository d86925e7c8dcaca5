"""WebPanel: the supervisor's service that serves the app on WEB_HOST:WEB_PORT for the run's life.

The supervisor owns the run, so the panel uses an AppRunner (not `run_app`); connections come
from `web.limits.BoundedListener` instead of a TCPSite, so that clients can never take the file
descriptors training needs (a cap and a header deadline, see web/limits.py). A port that cannot
be bound is a `PortInUseError`, a host that cannot be resolved or is not this machine's a
`ConfigError` naming WEB_HOST (the CLI prints one line and exits 1), never a run that silently
has no panel. `bind_panel(config)` binds before the run exists, so that such an error stops the
CLI before any file is written; the sockets are then handed to `WebPanel(sockets=...)`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import sys

from vsr_async.errors import ConfigError, PortInUseError, VsrError
from vsr_async.files.logs import RunLogging
from vsr_async.runtime.hooks import RunHook
from vsr_async.runtime.supervisor import Supervisor
from vsr_async.settings import Config
from web.app import create_app
from web.keys import EVENTS, SECURITY
from web.limits import (
    BoundedAppRunner,
    BoundedListener,
    BoundedServer,
    ConnectionLimits,
    bind_sockets,
)
from web.security import UNSPECIFIED_HOSTS

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 3.0  # handlers still running after on_shutdown (none, normally)


def url_host(host: str) -> str:
    """How the bind address appears in a URL: brackets for IPv6, this machine's name for 0.0.0.0."""
    host = host.strip()
    if host.strip("[]") in UNSPECIFIED_HOSTS:
        return socket.gethostname()
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            return f"[{host.strip('[]')}]"
    except ValueError:
        pass
    return host


async def bind_panel(config: Config) -> list[socket.socket]:
    """The panel's listening sockets on WEB_HOST:WEB_PORT, or the one-line VsrError saying why
    they cannot be had (busy port, unknown host, an address this machine does not have)."""
    host, port = str(config.WEB_HOST).strip(), int(config.WEB_PORT)
    try:
        return await bind_sockets(host.strip("[]"), port)
    except OSError as exc:
        raise _bind_error(host, port, exc) from None


class WebPanel(RunHook):
    """`start()` binds (unless given bound `sockets`) and serves; `stop()` ends the event
    streams and closes the server."""

    def __init__(
        self,
        supervisor: Supervisor,
        config: Config,
        run_logging: RunLogging | None = None,
        sockets: list[socket.socket] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.config = config
        self.app = create_app(supervisor, config, run_logging)
        self.host = str(config.WEB_HOST).strip()
        self.port: int | None = None
        self.limits = ConnectionLimits.from_config(config)
        self._runner: BoundedAppRunner | None = None
        self._listener: BoundedListener | None = None
        self._sockets = sockets

    @property
    def token(self) -> str | None:
        return self.app[SECURITY].token

    def browser_link(self) -> str | None:
        """The address to open, with a generated token (shown on this terminal only: it never
        goes into the store, the snapshot files or training.log). None before the panel runs."""
        if self.port is None:
            return None
        if self.app[SECURITY].token_generated:
            return f"{self.url}?token={self.token}"
        return self.url

    @property
    def url(self) -> str:
        """The panel's address (without the token)."""
        if self.port is None:
            raise RuntimeError("the web panel is not started")
        return f"http://{url_host(self.host)}:{self.port}/"

    async def start(self) -> None:
        runner = BoundedAppRunner(
            self.app,
            limits=self.limits,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            handle_signals=False,
        )
        sockets, self._sockets = self._sockets or await bind_panel(self.config), None
        try:
            await runner.setup()
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        assert isinstance(runner.server, BoundedServer)
        listener = BoundedListener(runner.server)
        listener.serve(sockets)
        self._runner, self._listener = runner, listener
        addresses = listener.addresses  # (host, port, ...) of each bound socket
        self.port = int(addresses[0][1]) if addresses else int(self.config.WEB_PORT)
        self.supervisor.store.set_extra(web_url=self.url)
        self._announce()

    def _announce(self) -> None:
        policy = self.app[SECURITY]
        log.info("web panel: %s", self.url)
        log.info(
            "web panel limits: %d connections at most, a request head within %g s",
            self.limits.max_connections,
            self.limits.header_timeout_s,
        )
        if policy.token_generated:
            # Printed once, to the terminal only (not into training.log).
            print(
                f"vsr_async: web panel at {self.url}?token={policy.token}\n"
                "vsr_async: this token was generated for this run; every request needs it "
                "(Authorization: Bearer <token>, or ?token= in the browser)",
                file=sys.stdout,
                flush=True,
            )

    async def stop(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        if self._listener is not None:
            await self._listener.stop()  # no new connections from here on
        await self.app[EVENTS].say_goodbye()  # open tabs learn that the run stopped
        await runner.cleanup()


def _bind_error(host: str, port: int, exc: OSError) -> VsrError:
    if isinstance(exc, socket.gaierror):
        return ConfigError("WEB_HOST", f"cannot resolve the host {host!r} ({exc.strerror})")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError("WEB_HOST", f"{host!r} is not an address of this machine")
    return PortInUseError(host, port, _reason(exc))


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)
