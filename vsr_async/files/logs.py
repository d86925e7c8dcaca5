"""Run logging: `DATA_ROOT/training.log`, the console, and subscribers (the panel's log lines).
Python warnings (`warnings.warn`, from any library) are logged too, while a run logs.

Records go through a queue to a listener thread, so a slow disk or terminal never blocks the
event loop or the GPU thread. Logging never stops a run and never floods the console: a handler
that cannot write (a full disk, a closed terminal) is reported once through the other handlers,
keeps trying with every new line, and says so when it works again. Text that is not valid UTF-8
(file names of any bytes) is written escaped (`\\xff`), never dropped.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vsr_async.names import display_name

LOGGER_NAMES = ("vsr_async", "web", "py.warnings")  # py.warnings: logging.captureWarnings
LOG_NAME = "training.log"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(asctime)s %(message)s"


class EscapingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return display_name(super().format(record))


class ConsoleFormatter(EscapingFormatter):
    """`12:00:01 message`; a warning or error names its level: `12:00:01 WARNING message`."""

    def __init__(self) -> None:
        super().__init__(CONSOLE_FORMAT, "%H:%M:%S")
        self._with_level = EscapingFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return self._with_level.format(record)
        return super().format(record)


class _ReportsFailures(logging.Handler):
    """A handler whose write errors are one line through the other handlers, not a traceback
    per record (`logging.Handler.handleError`), and that says when it writes again."""

    what = "log output"
    say: Callable[[str, bool], None] = staticmethod(lambda text, to_self: None)  # by RunLogging
    failing = False
    lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        lost = self.lost
        try:
            self.write(record)
        except Exception:  # FileHandler.emit opens a closed file outside its own try
            self.handleError(record)
        if self.failing and self.lost == lost:
            self.failing, self.lost = False, 0
            self.say(f"{self.what}: writing again (up to {lost} log lines are missing)", True)

    def write(self, record: logging.LogRecord) -> None:
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.lost += 1
        if self.failing:
            return
        self.failing = True  # first: the report below may fail on this same handler
        reason = describe(sys.exc_info()[1])
        self.say(f"{self.what}: cannot write ({reason}); retrying with each new line", False)


def describe(exc: BaseException | None) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"


class _FileHandler(_ReportsFailures, logging.FileHandler):
    pass


class _ConsoleHandler(_ReportsFailures, logging.StreamHandler):  # type: ignore[type-arg]
    what = "console"


class _CallbackHandler(_ReportsFailures):
    """Hands each formatted record to the subscribers (called on the listener thread)."""

    what = "log subscriber"

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.subscribers: list[Callable[[dict[str, Any]], None]] = []

    def write(self, record: logging.LogRecord) -> None:
        line = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": display_name(record.getMessage()),
        }
        for subscriber in list(self.subscribers):
            try:
                subscriber(line)
            except Exception:  # a broken subscriber must not break logging
                self.handleError(record)


class RunLogging:
    """Installs the queue handler on the project's loggers; `close()` removes it and flushes.

    Opening `training.log` raises OSError (a folder in its place, a read-only disk): the
    caller turns it into a one-line error naming the path.
    """

    def __init__(self, run_dir: Path, *, console: bool = True, level: int = logging.INFO) -> None:
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOG_NAME
        self.file_handler = _FileHandler(path, encoding="utf-8", errors="backslashreplace")
        self.file_handler.setFormatter(EscapingFormatter(FILE_FORMAT))
        self.file_handler.what = display_name(str(path))
        self.console_handler = _ConsoleHandler(sys.stderr)
        self.console_handler.setFormatter(ConsoleFormatter())
        self.console_handler.setLevel(logging.INFO if console else logging.CRITICAL + 1)
        self.callbacks = _CallbackHandler()
        self._handlers: list[_ReportsFailures] = [
            self.file_handler,
            self.console_handler,
            self.callbacks,
        ]
        for handler in self._handlers:
            handler.say = self._reporter(handler)
        self._listener = logging.handlers.QueueListener(
            self._queue, *self._handlers, respect_handler_level=True
        )
        self._handler = logging.handlers.QueueHandler(self._queue)
        self._loggers = [logging.getLogger(name) for name in LOGGER_NAMES]
        self._saved_levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.addHandler(self._handler)
            lg.setLevel(level)
        self._saved_showwarning = warnings.showwarning
        logging.captureWarnings(True)  # warnings.warn → the py.warnings logger → training.log
        self._listener.start()

    def _reporter(self, about: logging.Handler) -> Callable[[str, bool], None]:
        """Say a line about handler `about` through the others, and through `about` itself
        when `to_self` (it works again: its own output marks the gap). Listener thread only."""

        def say(text: str, to_self: bool) -> None:
            record = logging.LogRecord(__name__, logging.WARNING, __file__, 0, text, None, None)
            for handler in self._handlers:
                if (to_self or handler is not about) and record.levelno >= handler.level:
                    handler.handle(record)

        return say

    def set_console(self, enabled: bool) -> None:
        """The dashboard takes the terminal over: console lines would tear its frame."""
        self.console_handler.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """`callback` runs on the listener thread; returns an unsubscribe function."""
        self.callbacks.subscribers.append(callback)
        return lambda: self.callbacks.subscribers.remove(callback)

    def close(self) -> None:
        logging.captureWarnings(False)
        warnings.showwarning = self._saved_showwarning  # as it was, captured before us or not
        for lg, saved in zip(self._loggers, self._saved_levels, strict=True):
            lg.removeHandler(self._handler)
            lg.setLevel(saved)
        self._listener.stop()
        try:
            self.file_handler.close()  # the last flush can meet a full disk too
        except OSError as exc:
            if not self.file_handler.failing:
                self.file_handler.failing = True
                self.file_handler.say(
                    f"{self.file_handler.what}: the last lines could not be written "
                    f"({describe(exc)})",
                    False,
                )
