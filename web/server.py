"""WebPanel: the supervisor's service that serves the app on WEB_HOST:WEB_PORT for the run's life.

The supervisor owns the run, so the panel uses AppRunner + TCPSite (not `run_app`). A port that
cannot be bound is a `PortInUseError` (the CLI prints one line and exits 1), never a run that
silently has no panel.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import sys
from typing import Any

from aiohttp import web

from vsr_async.errors import PortInUseError
from vsr_async.files.logs import RunLogging
from vsr_async.runtime.hooks import RunHook
from vsr_async.runtime.supervisor import Supervisor
from web.app import create_app
from web.keys import EVENTS, SECURITY
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


class WebPanel(RunHook):
    """`start()` binds and serves; `stop()` ends the event streams and closes the server."""

    def __init__(
        self, supervisor: Supervisor, config: Any, run_logging: RunLogging | None = None
    ) -> None:
        self.supervisor = supervisor
        self.config = config
        self.app = create_app(supervisor, config, run_logging)
        self.host = str(config.WEB_HOST).strip()
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

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
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S, handle_signals=False
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host.strip("[]"), int(self.config.WEB_PORT))
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise PortInUseError(self.host, int(self.config.WEB_PORT), _reason(exc)) from None
        self._runner = runner
        addresses = runner.addresses  # (host, port, ...) of each bound socket
        self.port = int(addresses[0][1]) if addresses else int(self.config.WEB_PORT)
        self.supervisor.store.set_extra(web_url=self.url)
        self._announce()

    def _announce(self) -> None:
        policy = self.app[SECURITY]
        log.info("web panel: %s", self.url)
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
        await self.app[EVENTS].say_goodbye()  # open tabs learn that the run stopped
        await runner.cleanup()


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "this machine has no such address"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)
