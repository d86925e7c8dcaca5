"""Dashboard: the run in the terminal, drawn with rich from `store.snapshot()` and nothing else.

Redrawn on the event loop (never the training thread) at most `MAX_FRAMES_PER_S` times a second,
driven by the store's change notifications. Only for a terminal stdout; without one the
supervisor's log lines (one per LOG_TBOARD_EVERY steps, one per validation) are the display.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import IO, Any, cast

from rich.console import Console
from rich.live import Live

from vsr_async.runtime.hooks import RunHook
from vsr_async.runtime.snapshot import Snapshot
from vsr_async.settings import Config
from vsr_async.terminal.activity import ActivityView
from vsr_async.terminal.formatting import fmt_percent, fmt_steps
from vsr_async.terminal.frame import DashboardFrame
from vsr_async.terminal.tty import LEAVE_FULL_SCREEN, FrameWriter, is_terminal

log = logging.getLogger(__name__)

MAX_FRAMES_PER_S = 4
IDLE_REDRAW_S = 1.0  # redraw this often even without changes (message expiry, resize fallback)
MESSAGE_TTL_S = 20.0  # key feedback stays this long; the stop prompt stays until answered


# --- the service ------------------------------------------------------------------------------


class Dashboard(RunHook):
    """The supervisor service that owns the terminal's output while the run lasts.

    `start()` takes the screen (rich `Live`, alternate screen, no auto refresh) and silences the
    console log handler if stderr would tear the frame (training.log still gets every line);
    `close()` gives both back and is safe on every exit path (it is also registered with
    `atexit`). The keyboard calls `notify`, `switch_view` and `toggle_help`.
    """

    def __init__(
        self,
        store: Any,
        config: Config,
        *,
        console: Console | None = None,
        run_logging: Any = None,
        screen: bool = True,
    ) -> None:
        self.store = store
        self.config = config
        self.console = console
        self.run_logging = run_logging
        self.screen = screen
        self.view = ActivityView.BY_DIRECTION
        self.help_visible = False
        self.keyboard_active = False
        self.keyboard_note = "stdin is not a terminal"
        self.panel_link: Callable[[], str | None] | None = None  # set by the CLI (web panel)
        self.frames_drawn = 0
        self._message: tuple[str, str, float, bool] | None = None
        self._live: Live | None = None
        self._writer: FrameWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()
        self._console_was_on: bool | None = None
        self._draw_failed = False
        self._winch = False

    @classmethod
    def for_terminal(cls, supervisor: Any, run_logging: Any = None) -> Dashboard | None:
        """A dashboard when stdout is a (non-dumb) terminal, else None (plain log lines)."""
        if not is_terminal(sys.stdout) or os.environ.get("TERM", "") in ("dumb", "unknown"):
            return None
        dashboard = cls(supervisor.store, supervisor.config, run_logging=run_logging)
        return dashboard

    # --- keyboard-facing -----------------------------------------------------------------------

    def notify(self, message: str, style: str = "bold", *, prompt: bool = False) -> None:
        """Show key feedback on the status line (a prompt stays until the next message)."""
        self._message = (message, style, time.monotonic(), prompt)
        self._poke()

    def switch_view(self) -> ActivityView:
        views = list(ActivityView)
        self.view = views[(views.index(self.view) + 1) % len(views)]
        self._poke()
        return self.view

    def toggle_help(self) -> bool:
        self.help_visible = not self.help_visible
        self._poke()
        return self.help_visible

    def current_message(self) -> tuple[str, str] | None:
        if self._message is None:
            return None
        text, style, shown_at, prompt = self._message
        if not prompt and time.monotonic() - shown_at > MESSAGE_TTL_S:
            return None
        return text, style

    def panel_url(self, snapshot: Snapshot) -> str:
        if self.panel_link is not None and (link := self.panel_link()):
            return link  # may carry a generated token: this terminal is where it is shown
        runtime = snapshot.get("runtime") or {}
        url = runtime.get("web_url")
        if url:
            return str(url)
        if not self.config.WEB_ENABLED:
            return "off"
        return f"http://{self.config.WEB_HOST}:{self.config.WEB_PORT}"

    # --- drawing -------------------------------------------------------------------------------

    def render(self, snapshot: Snapshot) -> DashboardFrame:
        return DashboardFrame(self, snapshot)

    def draw(self) -> None:
        """One frame from a fresh snapshot (event loop only)."""
        if self._live is None:
            return
        try:
            self._live.update(self.render(self.store.snapshot()), refresh=True)
            self.frames_drawn += 1
        except Exception:  # a drawing bug must never stop training; report it once
            if not self._draw_failed:
                self._draw_failed = True
                log.exception("dashboard: drawing failed")

    def _poke(self) -> None:
        self._poked.set()

    async def _next_change(self, version: int) -> int:
        """Until the store changes, a local change (key, resize), or IDLE_REDRAW_S passes."""
        waiters = [
            asyncio.ensure_future(self.store.wait_for_change(version, IDLE_REDRAW_S)),
            asyncio.ensure_future(self._poked.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        self._poked.clear()
        return self.store.version

    async def _draw_loop(self) -> None:
        version = -1
        while True:
            version = await self._next_change(version)
            while self._writer is not None and self._writer.busy:  # the terminal is behind:
                await asyncio.sleep(1 / MAX_FRAMES_PER_S)  # skip frames, never queue them
            self.draw()
            await asyncio.sleep(1 / MAX_FRAMES_PER_S)  # at most 4 frames a second

    # --- service -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.console is None:
            self._writer = FrameWriter(sys.stdout)
            # rich annotates `file` as IO[str] but calls only write, flush, isatty, fileno and
            # encoding, which FrameWriter has; it is no full file object.
            file = cast(IO[str], self._writer)
            self.console = Console(file=file, force_terminal=True)  # size: per frame
        if self.run_logging is not None and is_terminal(sys.stderr):
            handler = self.run_logging.console_handler
            self._console_was_on = handler.level <= logging.INFO
            self.run_logging.set_console(False)
        self._live = Live(
            console=self.console,
            screen=self.screen,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="crop",
        )
        self._live.start()
        atexit.register(self.close)
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGWINCH, self._poke)
            self._winch = True
        self.draw()
        self._task = asyncio.create_task(self._draw_loop(), name="dashboard")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.close()

    def close(self) -> None:
        """Give the terminal back (idempotent; sync, so it also runs from `atexit`)."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(RuntimeError):  # from atexit, the loop may be closed
                task.cancel()
        if self._winch:
            self._winch = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGWINCH)
        live, self._live = self._live, None
        if live is None:
            return
        atexit.unregister(self.close)
        with contextlib.suppress(Exception):
            live.update(self.render(self.store.snapshot()))
            live.stop()
        if self._writer is not None:
            self._writer.close()
        if self._console_was_on is not None and self.run_logging is not None:
            self.run_logging.set_console(self._console_was_on)
        if self._writer is not None:
            with contextlib.suppress(OSError):  # the terminal may be gone (hang-up)
                print(self.summary(self.store.snapshot()), file=sys.stdout, flush=True)

    def summary(self, s: Snapshot) -> str:
        """One line left on the normal screen when the dashboard closes."""
        parts = [f"vsr_async: step {fmt_steps(s['step_current'])}/{fmt_steps(s['step_max'])}"]
        if s["validation_step"] is not None:
            parts.append(
                f"last validation at step {fmt_steps(s['validation_step'])}: output "
                f"{fmt_percent(s['quality_ki_value'])}, improvement "
                f"{fmt_percent(s['quality_improvement_value'], signed=True)}"
            )
        if s["last_statistics_written"]:
            parts.append(f"statistics {s['last_statistics_written']}")
        return " · ".join(parts)

    def on_hard_exit(self) -> None:
        self.leave_screen_now()

    def leave_screen_now(self) -> None:
        """Hard-exit hook (second Ctrl+C): no locks, no thread, just the escape codes."""
        if self._live is not None and self.screen:
            with contextlib.suppress(OSError):
                os.write(sys.stdout.fileno(), LEAVE_FULL_SCREEN)
