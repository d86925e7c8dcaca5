"""Progress of a tool's long work on stderr: a live bar with items/s and ETA on a terminal, a
plain line every PLAIN_EVERY_S seconds otherwise (logs, pipes). `advance` is thread-safe.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

PLAIN_EVERY_S = 10.0


class Progress:
    """`with Progress("upscale", total, unit="frames") as bar: ... bar.advance()`."""

    def __init__(
        self, label: str, total: int | None, *, unit: str = "frames", stream: TextIO | None = None
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_line = self.started
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.stream.isatty():
            self._bar, self._task = _rich_bar(self.label, self.total, self.unit, self.stream)
            self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)
                return
            now = time.monotonic()
            if now - self._last_line >= PLAIN_EVERY_S:
                self._last_line = now
                print(self.line(), file=self.stream, flush=True)

    @property
    def rate(self) -> float:
        """Items per second since the start."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """'upscale: 120/2000 frames, 6.1 frames/s, ETA 5:08' (the plain progress line)."""
        rate = self.rate
        total = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0:
            left = max(self.total - self.done, 0) / rate
            eta = f", ETA {int(left // 60)}:{int(left % 60):02d}"
        return f"{self.label}: {self.done}{total} {self.unit}, {rate:.1f} {self.unit}/s{eta}"


def _rich_bar(label: str, total: int | None, unit: str, stream: TextIO) -> tuple[Any, Any]:
    from rich.console import Console

    from vsr_async.tools.progress_bar import rich_bar

    return rich_bar(label, total, unit, Console(file=stream))
