"""TensorBoardService: TensorBoard served from the training process, beside the panel.

The predecessor started `tensorboard --port 6006` as a separate program; here `--tensorboard
[PORT]` (TENSORBOARD_ENABLED, TENSORBOARD_PORT) runs `tensorboard.program.TensorBoard` in this
process on WEB_HOST, over the run's `tensorboard/` folder. Its HTTP server and its reloading run
on threads of their own, never on the event loop; `stop()` ends both and frees the port. The
snapshot's `tensorboard_port` holds the port while it serves (the panel links to it).

TensorBoard has no access control: on a non-loopback WEB_HOST the start says so in a warning.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
import warnings
from pathlib import Path
from typing import Any

from vsr_async.errors import ConfigError
from vsr_async.runtime.hooks import RunHook
from vsr_async.runtime.launch import TENSORBOARD_DIR
from vsr_async.runtime.store import StatsStore
from web.security import is_loopback
from web.server import url_host

log = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 5.0  # how often new events are read (the predecessor's --reload_interval=5)
STOP_TIMEOUT_S = 10.0


def port_error(host: str, port: int, reason: str) -> ConfigError:
    return ConfigError(
        "TENSORBOARD_PORT",
        f"cannot start TensorBoard on {host}:{port}: {reason} "
        "(pick another port with --tensorboard PORT)",
    )


def check_tensorboard_port(host: str, port: int) -> None:
    """Blocking: a port that cannot be bound is one line before the run writes any file."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind(address)
    except OSError as exc:
        busy = exc.errno == errno.EADDRINUSE
        raise port_error(host, port, "address already in use" if busy else str(exc)) from None


class TensorBoardService(RunHook):
    """Run hook: `start()` serves TensorBoard (a busy port is a ConfigError naming
    TENSORBOARD_PORT); `stop()` shuts it down."""

    def __init__(self, store: StatsStore, logdir: Path, host: str, port: int) -> None:
        self.store = store
        self.logdir = Path(logdir)
        self.host = host.strip().strip("[]") or "0.0.0.0"
        self.requested_port = port
        self.port: int | None = None
        self._server: Any = None
        self._reloader: threading.Thread | None = None
        self._stopping = threading.Event()

    @classmethod
    def for_run(cls, store: StatsStore, run_dir: Path, config: Any) -> TensorBoardService:
        """Over the run's `tensorboard/` folder, on the panel's host."""
        return cls(store, Path(run_dir) / TENSORBOARD_DIR, config.WEB_HOST, config.TENSORBOARD_PORT)

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}/"

    async def start(self) -> None:
        await asyncio.to_thread(self._launch)
        self.store.set_tensorboard_port(self.port)
        log.info("tensorboard: %s (logdir %s)", self.url, self.logdir)
        if not is_loopback(self.host):
            log.warning(
                "tensorboard: serving on %s without access control (the panel's token does not "
                "cover it): anyone who can reach port %d can read this run's TensorBoard data",
                self.host,
                self.port,
            )

    def _launch(self) -> None:
        """On a worker thread: build TensorBoard (one blocking first read of the folder),
        serve it on its own thread, and start the reloader."""
        # TensorBoard's vendored bleach imports html5lib's deprecated sanitizer: a warning at
        # the first start that says nothing about this run (set here, where it is imported).
        warnings.filterwarnings(
            "ignore", message="html5lib's sanitizer is deprecated", category=DeprecationWarning
        )
        from tensorboard import program  # type: ignore[import-untyped]

        servers: list[Any] = []

        def make_server(app: Any, flags: Any) -> Any:
            server = program.WerkzeugServer(app, flags)
            servers.append(server)
            return server

        class InProcessTensorBoard(program.TensorBoard):
            """Keeps its data ingester, so that the service reloads it (and can stop that)."""

            ingester: Any = None

            def _make_data_ingester(self) -> Any:
                self.ingester = super()._make_data_ingester()
                return self.ingester

        board = InProcessTensorBoard(server_class=make_server)
        board.configure(
            logdir=str(self.logdir),
            host=self.host,
            port=self.requested_port,
            reload_interval=0,  # the first read only: the reloader below can be stopped
            reload_task="blocking",
            load_fast="false",  # in this process, no data-server subprocess
        )
        # One line per HTTP request would fill training.log.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        try:
            board.launch()
        except program.TensorBoardServerException as exc:
            if isinstance(exc, program.TensorBoardPortInUseError):
                raise port_error(self.host, self.requested_port, "address already in use") from None
            raise port_error(self.host, self.requested_port, exc.msg) from None
        self._server = servers[0]
        self.port = int(self._server.server_port)
        multiplexer = board.ingester.deprecated_multiplexer
        self._reloader = threading.Thread(
            target=self._reload, args=(multiplexer,), name="tensorboard-reload", daemon=True
        )
        self._reloader.start()

    def _reload(self, multiplexer: Any) -> None:
        """Read new events every RELOAD_INTERVAL_S until stopped (what TensorBoard's own
        reloader does, but with a way to end it)."""
        failing = False
        while not self._stopping.wait(RELOAD_INTERVAL_S):
            try:
                multiplexer.AddRunsFromDirectory(str(self.logdir))
                multiplexer.Reload()
                failing = False
            except Exception as exc:  # a reading problem must never end the run
                if not failing:
                    log.warning("tensorboard: cannot read %s (%s); retrying", self.logdir, exc)
                failing = True

    async def stop(self) -> None:
        if self._server is None:
            return
        await asyncio.to_thread(self._shutdown)
        self.store.set_tensorboard_port(None)
        log.info("tensorboard stopped")

    def _shutdown(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        server.shutdown()  # returns once serve_forever has returned
        server.server_close()  # the port is free from here on
        if self._reloader is not None:
            self._reloader.join(STOP_TIMEOUT_S)
