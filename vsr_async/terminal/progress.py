"""The CLI's progress bar for work before a run starts (building the demo data, scanning a
dataset): rich on stderr, fed by the `progress(done, total, label)` callbacks of `data`."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """A rich progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._progress.add_task(label, total=None)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, done: int, total: int, label: str | None = None) -> None:
        kwargs: dict[str, Any] = {"completed": done, "total": total}
        if label:
            kwargs["description"] = label
        self._progress.update(self._task, **kwargs)
