"""The run's checkpointer: copy the state on the GPU thread, write it on one I/O thread, in order.

The file format, verification and retention rules live in `vsr_async.files.checkpoints`; this
module only schedules the copies and writes from the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from vsr_async.errors import CheckpointError
from vsr_async.files.atomic import remove_stale_temps
from vsr_async.files.checkpoints import (
    BEST_NAME,
    CHECKPOINT_DIR,
    RetentionScope,
    better_quality,
    checkpoint_name,
    find_lineage,
    load_checkpoint,
    retention_victims,
    write_checkpoint,
)
from vsr_async.runtime.hooks import RunHook
from vsr_async.runtime.json_values import utc_now_iso
from vsr_async.runtime.store import StatsStore
from vsr_async.runtime.worker import GpuWorker
from vsr_async.settings import Config

log = logging.getLogger(__name__)

# State copies held for the I/O thread at most; a further save waits for a write to finish, so
# a slow disk or a small SAVE_STEP_EVERY cannot pile up copies in memory without bound.
MAX_WRITES_IN_FLIGHT = 2


class Checkpointer(Protocol):
    """Copies the state (awaited: the GPU thread is busy meanwhile), writes it behind. The
    returned future resolves with the file name once it is on disk, or None when nothing was
    written (best.pt already holds a better model)."""

    async def save(self, reason: str) -> asyncio.Future[str | None]: ...

    async def save_best(self) -> asyncio.Future[str | None]: ...

    def apply_config(self, config: Config) -> None: ...

    async def close(self) -> None: ...


class CheckpointWriter(RunHook):
    """The supervisor's checkpointer: copy on the GPU thread, write on the I/O thread, in order."""

    def __init__(self, run_dir: Path, worker: GpuWorker, store: StatsStore, config: Config) -> None:
        self.directory = Path(run_dir) / CHECKPOINT_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temps(self.directory):
            log.warning("removed %s, left by an interrupted checkpoint write", stale.name)
        self.worker = worker
        self.store = store
        self.config = config
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-io")
        self._writes: set[asyncio.Future[str | None]] = set()
        self._scope = RetentionScope()  # touched on the I/O thread only
        self._resumed: Any = None  # what the engine resumed from (read once, at the first save)
        self._best_on_disk: float | None = None  # quality best.pt holds; read at the first best
        self._best_read = False
        self._last_save: tuple[tuple[Any, ...], asyncio.Future[str | None]] | None = None

    def _state_key(self) -> tuple[Any, ...]:
        """What a checkpoint's content depends on besides training steps (the worker's step:
        as of its last GPU call)."""
        v = self.store.validation
        return (self.worker.step, v.count, v.best_quality, self.config)

    async def _capture(self, reason: str) -> dict[str, Any]:
        while len(self._writes) >= MAX_WRITES_IN_FLIGHT:
            await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)
        state = await self.worker.capture_state()
        if self._resumed is None:
            self._resumed = self.worker.resumed
        v = self.store.validation
        state.update(
            run_id=self.store.run_id,
            best_quality=v.best_quality,
            best_step=v.best_step,
            validation_count=v.count,
            saved_at=utc_now_iso(),
            reason=reason,
        )
        return state

    # --- on the I/O thread ---------------------------------------------------------------------

    def _write_periodic(self, name: str, state: dict[str, Any], keep: int) -> str:
        write_checkpoint(self.directory / name, state)
        log.info("checkpoint saved: %s", name)  # before any retention line about older files
        self._scope.own[name] = int(state["step"])
        self._retain(keep)
        return name

    def _retain(self, keep: int) -> None:
        scope = self._scope
        if keep == 0:  # KEEP_CHECKPOINTS = 0: every checkpoint stays
            return
        if scope.lineage is None:
            scope.lineage = find_lineage(self.directory, self._resumed, scope.own)
        for name in retention_victims(scope.candidates(), keep, scope.newest_own()):
            try:
                (self.directory / name).unlink(missing_ok=True)
            except OSError as exc:  # the new file is written: this must not fail the save
                log.warning("checkpoint retention: cannot remove %s: %s", name, exc.strerror)
                continue
            scope.forget(name)
            log.info("checkpoint retention: removed %s", name)

    def _stored_best_quality(self) -> float | None:
        """The quality best.pt holds (read once, then kept in memory); None if there is none."""
        if not self._best_read:
            self._best_read = True
            path = self.directory / BEST_NAME
            if path.exists():
                try:
                    self._best_on_disk = load_checkpoint(path, lazy=True).get("best_quality")
                except CheckpointError as exc:
                    log.warning("%s; the next best model replaces it", exc)
        return self._best_on_disk

    def _write_best(self, state: dict[str, Any]) -> str | None:
        stored, quality = self._stored_best_quality(), state.get("best_quality")
        if stored is not None and not better_quality(quality, stored):
            log.info(
                "%s kept: it holds quality %.6f, this model's %s is not better",
                BEST_NAME,
                stored,
                "unknown" if quality is None else f"{quality:.6f}",
            )
            return None
        write_checkpoint(self.directory / BEST_NAME, state)
        self._best_on_disk = quality
        log.info("checkpoint saved: %s", BEST_NAME)
        return BEST_NAME

    # --- on the event loop ---------------------------------------------------------------------

    def _submit(self, write: Any, *args: Any) -> asyncio.Future[str | None]:
        loop = asyncio.get_running_loop()
        future = asyncio.ensure_future(loop.run_in_executor(self._io, write, *args))
        self._writes.add(future)
        future.add_done_callback(self._written)
        return future

    def _written(self, future: asyncio.Future[str | None]) -> None:
        self._writes.discard(future)
        if future.cancelled():
            return
        if future.exception() is not None:
            log.error("checkpoint write failed: %s", future.exception())
            return
        if (name := future.result()) is not None:
            self.store.checkpoint_saved(name)

    def _repeat_of_last_save(self, key: tuple[Any, ...]) -> asyncio.Future[str | None] | None:
        """The previous save's future when nothing changed since (same step, no validation, no
        config change): e.g. the shutdown save right after a scheduled save at the last step."""
        if self._last_save is None or self._last_save[0] != key:
            return None
        future = self._last_save[1]
        failed = future.done() and (future.cancelled() or future.exception() is not None)
        return None if failed else future

    async def save(self, reason: str) -> asyncio.Future[str | None]:
        """Copy the state now (training waits for the copy only); the write runs behind."""
        key = self._state_key()
        repeat = self._repeat_of_last_save(key)
        if repeat is not None:
            return repeat
        state = await self._capture(reason)
        name = checkpoint_name(state["step"])
        future = self._submit(self._write_periodic, name, state, self.config.KEEP_CHECKPOINTS)
        self._last_save = (key, future)
        return future

    async def save_best(self) -> asyncio.Future[str | None]:
        """best.pt, if this model beats the quality stored in it (checked on the I/O thread)."""
        state = await self._capture("best")
        return self._submit(self._write_best, state)

    def apply_config(self, config: Config) -> None:
        self.config = config

    async def on_validation(self, step: int, result: Any, improved: bool) -> None:
        """Run hook: a new best quality is saved as best.pt."""
        if improved:
            await self.save_best()

    async def close(self) -> None:
        """Wait for every write in flight, then stop the I/O thread."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        self._io.shutdown(wait=True)
