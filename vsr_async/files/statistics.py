"""The Statistik writer: after every validation, the store's snapshot goes to
`DATA_ROOT/Statistik_<step>.json`, atomically, by one writer task, in submission order.

It never blocks training (the supervisor submits and moves on), and it cannot die: any failed
write (disk full, read-only directory, a snapshot that does not serialise, a write that hangs) is
logged at once, reported through `on_error`, kept in memory and retried before the next snapshot
is written. `close()` is bounded whatever state the writer is in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsr_async.files.atomic import DaemonThreadExecutor, remove_stale_temps, write_atomic_async
from vsr_async.names import display_name, displayable

log = logging.getLogger(__name__)

STATISTICS_GLOB = "Statistik_*.json"
WRITE_TIMEOUT_S = 30.0  # a write that takes longer (a hung mount) counts as failed, is retried
# Serialising and aiofiles' blocking calls run here: a write hung on a dead mount is abandoned at
# exit instead of holding the process (asyncio.run joins the default executor).
_WRITER_THREADS = DaemonThreadExecutor()


def serialize_snapshot(snapshot: Mapping[str, Any]) -> bytes:
    """The one serializer: the file writer and the HTTP download give the same bytes.

    Strict JSON in UTF-8; a string that is not valid UTF-8 (a file name of any bytes that
    reached the snapshot unescaped) is escaped here rather than failing the write.
    """
    text = json.dumps(snapshot, indent=2, ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(displayable(snapshot), indent=2, ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")


def statistics_name(step: int) -> str:
    """`Statistik_<step>.json`, step not padded (DESIGN §4)."""
    return f"Statistik_{step}.json"


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


class StatisticsWriteError(OSError):
    """A Statistik file could not be written (the message names it); the snapshot is kept."""


@dataclass
class _Job:
    step: int
    snapshot: Mapping[str, Any]  # the store's Snapshot (files/ cannot import its TypedDict)
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

    def submit(self, step: int, snapshot: Mapping[str, Any]) -> asyncio.Future[Path]:
        """Queue a snapshot; the future resolves with the path once the file is on disk."""
        job = _Job(step, snapshot, asyncio.get_running_loop().create_future())
        self._idle.clear()
        self._queue.put_nowait(job)
        return job.done

    @property
    def pending_steps(self) -> list[int]:
        """Steps whose file could not be written yet (kept in memory, retried)."""
        return sorted(self._pending)

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted has been tried; True if nothing is left pending."""
        if self._running():
            assert self._task is not None
            idle = asyncio.ensure_future(self._idle.wait())
            await asyncio.wait({idle, self._task}, timeout=timeout, return_when="FIRST_COMPLETED")
            idle.cancel()
        return self._idle.is_set() and not self._pending

    async def close(self, timeout: float | None = 30.0) -> bool:
        """Write what is left within `timeout`, then stop. True if every snapshot was written.

        Bounded whatever the writer's state: a task that ended early is replaced by a last
        attempt here, and a write that hangs is abandoned (its thread is a daemon, so it never
        holds the process) and reported as unwritten.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._running():  # never started, or ended: one last attempt from here
            self.start()
        assert self._task is not None
        self._queue.put_nowait(None)  # after every queued job
        await asyncio.wait({self._task}, timeout=_remaining(deadline))
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
        self._abandon_queued()
        for job in self._pending.values():
            _fail(job, StatisticsWriteError(f"{statistics_name(job.step)} was not written"))
        return not self._pending

    def _abandon_queued(self) -> None:
        """Jobs still queued when `close` gave up count as pending (named in the report)."""
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None:
                self._pending[job.step] = job
        self._idle.set()

    async def _run(self) -> None:
        """The task loop: no exception from a write (or a bug here) ends it; only `None` does."""
        while True:
            job = await self._queue.get()
            if job is None:
                return
            # Kept until written (a newer snapshot of the same step replaces it); older failures
            # are retried first, so files appear in step order.
            self._pending[job.step] = job
            try:
                for pending in sorted(self._pending.values(), key=lambda j: j.step):
                    await self._write(pending)
            except Exception as exc:  # a bug, not a write failure: keep the job, keep going
                self._failed(job, f"{type(exc).__name__}: {exc}")
            finally:
                if self._queue.empty():
                    self._idle.set()

    async def _write(self, job: _Job) -> None:
        name = statistics_name(job.step)
        target = self.directory / name
        try:
            await asyncio.wait_for(self._serialize_and_write(target, job), WRITE_TIMEOUT_S)
        except TimeoutError:
            self._failed(job, f"no answer from the disk within {WRITE_TIMEOUT_S:.0f} s")
            return
        except OSError as exc:
            self._failed(job, exc.strerror or str(exc))
            return
        except Exception as exc:  # e.g. a value JSON cannot hold: logged and retried, never fatal
            self._failed(job, f"{type(exc).__name__}: {exc}")
            return
        self._pending.pop(job.step, None)
        log.info("statistics: wrote %s", name)
        self._on_written(name)
        if not job.done.done():
            job.done.set_result(target)

    @staticmethod
    async def _serialize_and_write(target: Path, job: _Job) -> None:
        """Serialise off the loop, then the atomic aiofiles write (temp, fsync, rename)."""
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(_WRITER_THREADS, serialize_snapshot, job.snapshot)
        await write_atomic_async(target, data, executor=_WRITER_THREADS)

    def _failed(self, job: _Job, reason: str) -> None:
        """Log one line naming the file, tell the store, keep the snapshot for the retry."""
        message = display_name(f"could not write {statistics_name(job.step)}: {reason}")
        log.error("statistics: %s (kept in memory, retried with the next validation)", message)
        self._pending[job.step] = job
        try:
            self._on_error(message)
        except Exception:  # the store update failing must not end the writer either
            log.exception("statistics: reporting the failed write failed")
        _fail(job, StatisticsWriteError(message))


def _fail(job: _Job, exc: Exception) -> None:
    if not job.done.done():
        job.done.set_exception(exc)
        job.done.exception()  # retrieved: a failed write is reported, not raised later


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)
