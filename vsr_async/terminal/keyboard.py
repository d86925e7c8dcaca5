"""KeyboardReader: single keys from a terminal stdin, read by the event loop (no thread, no
per-step polling) and turned into supervisor commands the moment they arrive.

The supervisor runs each command at the next step boundary; this module only enqueues and
reports the outcome. It never touches the model, the worker or the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import termios
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from vsr_async.errors import CommandNotAvailable
from vsr_async.runtime.commands import Trigger
from vsr_async.runtime.hooks import RunHook
from vsr_async.terminal.tty import CbreakMode, is_foreground, is_terminal

log = logging.getLogger(__name__)

KEYS_HELP = "v validate, p pause/resume, c checkpoint, s dashboard view, h help, q stop"
STOP_PROMPT = "Stop training? [y/N]"


class KeyboardReader(RunHook):
    """Supervisor service: reads keys while the run lasts, only from a foreground terminal.

    `v` validate, `p` pause/resume, `c` checkpoint, `s` dashboard view, `h` help, `q` stop
    (asks; only `y` confirms). The terminal mode is restored by `stop()`/`close()`, by the
    supervisor's hard-exit hook (a second Ctrl+C) and, failing all else, at interpreter exit.
    """

    def __init__(self, supervisor: Any, dashboard: Any = None, *, stdin: TextIO | None = None):
        self.supervisor = supervisor
        self.dashboard = dashboard
        self.stdin = sys.stdin if stdin is None else stdin
        self.active = False
        self._fd: int | None = None
        self._mode: CbreakMode | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._sigcont = False
        self._confirming_stop = False
        self._validation: Any = None  # the queued request a second `v` coalesces into
        self._tasks: set[asyncio.Task[None]] = set()
        self._actions: dict[str, Callable[[], None]] = {
            "v": self._validate,
            "p": self._toggle_pause,
            "c": self._checkpoint,
            "s": self._switch_view,
            "h": self._help,
            "q": self._ask_stop,
        }

    def off_reason(self) -> str | None:
        """Why keys are not read in this process, or None when they are."""
        if not self.supervisor.config.KEYBOARD_ENABLED:
            return "--no-keyboard (KEYBOARD_ENABLED = false)"
        if not is_terminal(self.stdin):
            return "stdin is not a terminal"
        if not is_foreground(self.stdin.fileno()):
            return "running as a background job"
        return None

    # --- service -------------------------------------------------------------------------------

    async def start(self) -> None:
        reason = self.off_reason()
        if reason is None:
            try:
                self._attach()
            except (termios.error, OSError, ValueError) as exc:
                self.close()
                reason = f"cannot set the terminal mode ({exc})"
        if reason is not None:
            log.info("keyboard off: %s", reason)
            if self.dashboard is not None:
                self.dashboard.keyboard_note = reason
            return
        log.info("keyboard on: %s", KEYS_HELP)

    def _attach(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = self.stdin.fileno()
        self._mode = CbreakMode(self._fd)
        self._mode.enter()
        self._loop.add_reader(self._fd, self._on_readable)
        self._reading = True
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            self._loop.add_signal_handler(signal.SIGCONT, self._on_continue)
            self._sigcont = True
        self.active = True
        if self.dashboard is not None:
            self.dashboard.keyboard_active = True

    async def stop(self) -> None:
        self.close()
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def on_hard_exit(self) -> None:
        """Second Ctrl+C: give the terminal its mode back before the process ends."""
        if self._mode is not None:
            self._mode.restore()

    def close(self) -> None:
        """Stop reading and restore the terminal mode (idempotent, sync: safe on every path)."""
        self._detach_reader()
        if self._sigcont and self._loop is not None:
            self._sigcont = False
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(signal.SIGCONT)
        if self._mode is not None:
            self._mode.restore()
        self.active = False
        if self.dashboard is not None:
            self.dashboard.keyboard_active = False

    def _detach_reader(self) -> None:
        if self._reading and self._loop is not None and self._fd is not None:
            self._reading = False
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)

    def _on_continue(self) -> None:
        """After Ctrl+Z: `fg` gets cbreak back; `bg` stops reading (a background read would
        stop the whole process with SIGTTIN)."""
        if self._mode is None or not self._mode.active or self._fd is None:
            return
        if is_foreground(self._fd):
            with contextlib.suppress(OSError):
                self._mode.reapply()
            if not self._reading and self._loop is not None:
                self._loop.add_reader(self._fd, self._on_readable)
                self._reading = True
        else:
            self._detach_reader()

    # --- input -------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # the terminal went away (hang-up)
            self._detach_reader()
            log.warning("keyboard off: cannot read the terminal (%s)", exc)
            return
        if not data:
            self._detach_reader()
            log.info("keyboard off: stdin was closed")
            return
        for key in keys_in(data.decode("utf-8", "replace")):
            self.press(key)

    def press(self, key: str) -> None:
        """Act on one key: enqueue its command now (the supervisor runs it at the next step
        boundary) and report the outcome when it arrives."""
        if self._confirming_stop:
            self._confirming_stop = False
            if key in ("y", "Y"):
                self._stop()
            else:
                self._say("stop cancelled: training continues")
            return
        action = self._actions.get(key.lower())
        if action is not None:
            action()
        elif key.isprintable() and not key.isspace():
            self._say(f"key {key!r} does nothing ({KEYS_HELP})")

    # --- actions -----------------------------------------------------------------------------

    def _validate(self) -> None:
        self._spawn(self._request_validation())

    async def _request_validation(self) -> None:
        try:
            request = await self.supervisor.request_validation(Trigger.KEYBOARD)
        except CommandNotAvailable as exc:
            self._say(f"validation not possible: {exc}", error=True)
            return
        if request is self._validation:
            self._say("validation already queued")
            return
        self._validation = request
        self._say("validation queued: runs after the current step")
        try:
            report = await request.result
        except Exception as exc:
            self._say(f"validation failed: {exc}", error=True)
            return
        if report.statistics_file is None:
            self._say(
                f"validation at step {report.step} done, but its statistics file was not "
                f"written: {report.statistics_error}",
                error=True,
            )
        else:
            self._say(f"validation at step {report.step} done: {report.statistics_file}")

    def _toggle_pause(self) -> None:
        self._say("pause/resume queued: runs after the current step")
        self._watch(
            self.supervisor.toggle_pause(),
            lambda state: (
                "training paused (p resumes)" if state == "paused" else "training resumed"
            ),
            "cannot pause or resume",
        )

    def _checkpoint(self) -> None:
        self._say("checkpoint queued: saved after the current step")
        self._watch(
            self.supervisor.save_checkpoint("keyboard"),
            lambda name: f"checkpoint saved: {name}",
            "checkpoint not available yet",
            failure="checkpoint failed",
        )

    def _switch_view(self) -> None:
        if self.dashboard is None:
            self._say("no dashboard to switch: stdout is not a terminal")
            return
        view = self.dashboard.switch_view()
        self._say(f"layer activity {view.value}")

    def _help(self) -> None:
        if self.dashboard is None:
            self._say(f"keys: {KEYS_HELP}")
        else:
            self.dashboard.toggle_help()

    def _ask_stop(self) -> None:
        self._confirming_stop = True
        self._say(STOP_PROMPT, prompt=True)

    def _stop(self) -> None:
        self._say("stopping after the current step (final checkpoint, pending files)")
        self._watch(self.supervisor.stop("key q"), lambda _: None, "cannot stop")

    # --- feedback ------------------------------------------------------------------------------

    def _say(self, message: str, *, error: bool = False, prompt: bool = False) -> None:
        """Into training.log (and the console without a dashboard) and onto the dashboard."""
        (log.warning if error else log.info)("keyboard: %s", message)
        if self.dashboard is not None:
            style = "bold red" if error else ("bold reverse yellow" if prompt else "bold")
            self.dashboard.notify(message, style, prompt=prompt)

    def _watch(
        self,
        future: asyncio.Future[Any],
        done: Callable[[Any], str | None],
        unavailable: str,
        *,
        failure: str | None = None,
    ) -> None:
        async def report() -> None:
            try:
                outcome = await future
            except CommandNotAvailable as exc:
                self._say(f"{unavailable}: {exc}", error=True)
            except Exception as exc:
                self._say(f"{failure or unavailable}: {exc}", error=True)
            else:
                message = done(outcome)
                if message:
                    self._say(message)

        self._spawn(report())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def keys_in(text: str) -> list[str]:
    """The plain keys in what one read returned; escape sequences (arrows, F-keys, Alt+key)
    are dropped whole, so their letters never count as commands."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\x1b":
            keys.append(char)
            i += 1
            continue
        i += 1
        if i < len(text) and text[i] in "[O":  # CSI / SS3: up to the final byte
            i += 1
            while i < len(text) and not ("@" <= text[i] <= "~"):
                i += 1
        i += 1  # the final byte (or the Alt+key's key)
    return keys
