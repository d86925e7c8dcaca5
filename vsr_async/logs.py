"""Run logging: `DATA_ROOT/training.log`, the console, and subscribers (the panel's log lines).

Records go through a queue to a listener thread, so a slow disk or terminal never blocks the
event loop or the GPU thread.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOGGER_NAMES = ("vsr_async", "web")
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _CallbackHandler(logging.Handler):
    """Hands each formatted record to the subscribers (called on the listener thread)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.subscribers: list[Callable[[dict[str, Any]], None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for subscriber in list(self.subscribers):
            try:
                subscriber(line)
            except Exception:  # a broken subscriber must not break logging
                self.handleError(record)


class RunLogging:
    """Installs the queue handler on the project's loggers; `close()` removes it and flushes."""

    def __init__(self, run_dir: Path, *, console: bool = True, level: int = logging.INFO) -> None:
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.file_handler = logging.FileHandler(run_dir / "training.log", encoding="utf-8")
        self.file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        self.console_handler = logging.StreamHandler(sys.stderr)
        self.console_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        self.console_handler.setLevel(logging.INFO if console else logging.CRITICAL + 1)
        self.callbacks = _CallbackHandler()
        self._listener = logging.handlers.QueueListener(
            self._queue,
            self.file_handler,
            self.console_handler,
            self.callbacks,
            respect_handler_level=True,
        )
        self._handler = logging.handlers.QueueHandler(self._queue)
        self._loggers = [logging.getLogger(name) for name in LOGGER_NAMES]
        self._saved_levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.addHandler(self._handler)
            lg.setLevel(level)
        self._listener.start()

    def set_console(self, enabled: bool) -> None:
        """The dashboard takes the terminal over: console lines would tear its frame."""
        self.console_handler.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """`callback` runs on the listener thread; returns an unsubscribe function."""
        self.callbacks.subscribers.append(callback)
        return lambda: self.callbacks.subscribers.remove(callback)

    def close(self) -> None:
        for lg, saved in zip(self._loggers, self._saved_levels, strict=True):
            lg.removeHandler(self._handler)
            lg.setLevel(saved)
        self._listener.stop()
        self.file_handler.close()
