"""The tools' progress bar on stderr: done/total, items per second and ETA (rich, redrawn on a
terminal; elsewhere one summary line at the end). A failure erases it, so an error stays the
one line the user reads."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any


def rich_bar(label: str, total: int | None, unit: str, console: Any) -> tuple[Any, Any]:
    """The tools' one rich bar: label, bar, done/total, items per second, ETA; and its task."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} {unit}/s" if speed else f"-- {unit}/s")

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    return bar, bar.add_task(label, total=total)


class ToolProgress:
    """`with ToolProgress("scoring", total, "frames") as bar: ... bar.advance()`."""

    def __init__(self, label: str, total: int | None, unit: str) -> None:
        from rich.console import Console

        self.label, self.unit, self.total, self.done = label, unit, total, 0.0
        self._console = Console(stderr=True)
        self._started = 0.0
        self._progress, self._task = rich_bar(label, total, unit, self._console)

    def __enter__(self) -> ToolProgress:
        self._started = time.perf_counter()
        if self._console.is_terminal:
            self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._console.is_terminal:
            if kind is not None:
                self._progress.live.transient = True  # erased: the error line follows
            self._progress.stop()
        elif kind is None:
            seconds = time.perf_counter() - self._started
            rate = f", {self.done / seconds:.1f} {self.unit}/s" if seconds > 0 else ""
            self._console.print(
                f"{self.label}: {self.done:g} {self.unit} in {seconds:.1f} s{rate}",
                highlight=False,
            )

    def advance(self, count: float = 1) -> None:
        self.done += count
        self._progress.advance(self._task, count)

    def update(self, **changes: Any) -> None:
        """`total=`, `completed=`, `description=`."""
        if "completed" in changes:
            self.done = changes["completed"]
        self._progress.update(self._task, **changes)
