"""The Statistik writer: after every validation, the store's snapshot goes to
`DATA_ROOT/Statistik_<step>.json`, atomically, by one writer task, in submission order.

It never blocks training (the supervisor submits and moves on), and a failed write (disk full,
read-only directory) is logged, reported through `on_error`, kept in memory and retried before
the next snapshot is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsr_async.atomic import remove_stale_temps, write_atomic_async
from vsr_async.store import statistics_name

log = logging.getLogger(__name__)

STATISTICS_GLOB = "Statistik_*.json"


def serialize_snapshot(snapshot: dict[str, Any]) -> bytes:
    """The one serializer: the file writer and the HTTP download give the same bytes."""
    return json.dumps(snapshot, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8")


def statistics_step(name: str) -> int | None:
    """The step of a `Statistik_<step>.json` name, or None for any other name."""
    if not (name.startswith("Statistik_") and name.endswith(".json")):
        return None
    digits = name[len("Statistik_") : -len(".json")]
    return int(digits) if digits.isdigit() and str(int(digits)) == digits else None


def list_statistics(directory: Path) -> list[tuple[int, Path]]:
    """Saved Statistik files as (step, path), oldest step first; temp files are never listed."""
    found = []
    for path in Path(directory).glob(STATISTICS_GLOB):
        step = statistics_step(path.name)
        if step is not None and path.is_file():
            found.append((step, path))
    return sorted(found)


def remove_stale_statistics_temps(directory: Path) -> list[Path]:
    """Temp files of interrupted writes (a crash, `kill -9`); called once at start."""
    return remove_stale_temps(directory, prefix=".Statistik_")


@dataclass
class _Job:
    step: int
    snapshot: dict[str, Any]
    done: asyncio.Future[Path]


class StatisticsWriter:
    """One task writes snapshots in order; failed ones stay pending and are retried first."""

    def __init__(
        self,
        directory: Path,
        *,
        on_written: Callable[[str], None] = lambda name: None,
        on_error: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.directory = Path(directory)
        self._on_written = on_written
        self._on_error = on_error
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._pending: dict[int, _Job] = {}  # failed writes, by step (a newer one replaces)
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="statistics-writer")

    def submit(self, step: int, snapshot: dict[str, Any]) -> asyncio.Future[Path]:
        """Queue a snapshot; the future resolves with the path once the file is on disk."""
        job = _Job(step, snapshot, asyncio.get_running_loop().create_future())
        self._idle.clear()
        self._queue.put_nowait(job)
        return job.done

    @property
    def pending_steps(self) -> list[int]:
        """Steps whose file could not be written yet (kept in memory, retried)."""
        return sorted(self._pending)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted has been tried; True if nothing is left pending."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return not self._pending

    async def close(self, timeout: float | None = 30.0) -> bool:
        """Flush (bounded), then stop the task. Returns True if every snapshot was written."""
        ok = await self.flush(timeout)
        if self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 5.0)
        return ok

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            if job is None:
                return
            # Retry older failures first, so files appear in step order.
            self._pending.pop(job.step, None)
            for pending in [*sorted(self._pending.values(), key=lambda j: j.step), job]:
                await self._write(pending)
            if self._queue.empty():
                self._idle.set()

    async def _write(self, job: _Job) -> None:
        name = statistics_name(job.step)
        try:
            data = await asyncio.to_thread(serialize_snapshot, job.snapshot)  # off the loop
            await write_atomic_async(self.directory / name, data)
        except OSError as exc:
            message = f"could not write {name}: {exc.strerror or exc}"
            log.error("statistics: %s (kept in memory, retried with the next validation)", message)
            self._pending[job.step] = job
            self._on_error(message)
            if not job.done.done():
                job.done.set_exception(OSError(exc.errno, message))
                job.done.exception()  # retrieved: a failed write is reported, not raised later
            return
        self._pending.pop(job.step, None)
        log.info("statistics: wrote %s", name)
        self._on_written(name)
        if not job.done.done():
            job.done.set_result(self.directory / name)
