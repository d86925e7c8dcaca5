"""Checkpoints in DATA_ROOT/checkpoints: atomic files that hold everything a run needs to continue.

State is copied on the GPU thread (`TrainingEngine.capture_state`), then written here by one I/O
thread: temp file in the same directory, fsync, rename, directory fsync — never `torch.save`
straight onto the target. Files hold only tensors and plain Python values, so they load with
`torch.load(weights_only=True)`. Retention keeps KEEP_CHECKPOINTS newest plus `best.pt`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from vsr_async.atomic import atomic_writer, remove_stale_temps
from vsr_async.errors import CheckpointError
from vsr_async.store import StatsStore, utc_now_iso
from vsr_async.worker import GpuWorker

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.pt"
FORMAT_VERSION = 1
SHAPE_KEYS = ("N_FEATS", "N_BLOCKS", "NUM_FRAMES", "SCALE")  # a checkpoint fits only its shape
REQUIRED_KEYS = ("format_version", "step", "model", "optimizer", "config", "run_id")
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
# State copies held for the I/O thread at most; a further save waits for a write to finish, so
# a slow disk or a small SAVE_STEP_EVERY cannot pile up copies in memory without bound.
MAX_WRITES_IN_FLIGHT = 2


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Periodic/requested checkpoints as (step, path), newest first (`best.pt` not included)."""
    found = []
    if Path(directory).is_dir():
        for path in Path(directory).iterdir():
            match = _NAME.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and verify one file; any damage (truncation, wrong content) is a CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except Exception as exc:  # torch raises many types for damaged zips and bad pickles
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise CheckpointError(path, f"cannot be loaded ({type(exc).__name__}: {reason})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, "does not hold a vsr_async checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(path, f"is incomplete (missing {', '.join(missing)})")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            path, f"has format {state['format_version']}, this version reads {FORMAT_VERSION}"
        )
    return state


def check_compatible(state: dict[str, Any], config: Any, path: Path) -> None:
    """Refuse a checkpoint whose model shape differs from the config, naming every key."""
    saved = state["config"]
    differing = [k for k in SHAPE_KEYS if saved.get(k) != getattr(config, k)]
    if differing:
        detail = ", ".join(
            f"{k}={saved.get(k)!r} (config has {getattr(config, k)!r})" for k in differing
        )
        raise CheckpointError(
            path,
            f"was trained with a different model shape: {detail}; use the same values, "
            "or --resume never to start a new run",
        )


def _load_or_warn(path: Path) -> dict[str, Any] | None:
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        log.warning("skipping damaged checkpoint: %s", exc)
        return None


def find_resume_checkpoint(directory: Path, config: Any) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads and verifies; damaged ones are skipped with a warning.

    `best.pt` counts too: it is newer than every periodic file when a kill came after a new best
    but before the next periodic save. Its best quality is kept either way, so a restart from an
    older periodic file never lets a worse validation overwrite the best.
    """
    directory = Path(directory)
    best_path = directory / BEST_NAME
    best = _load_or_warn(best_path) if best_path.is_file() else None
    found: tuple[Path, dict[str, Any]] | None = None
    for _, path in list_checkpoints(directory):
        state = _load_or_warn(path)
        if state is not None:
            found = (path, state)
            break
    if best is not None and (found is None or best["step"] > found[1]["step"]):
        found = (best_path, best)
    if found is None:
        return None
    path, state = found
    check_compatible(state, config, path)
    if best is not None and _better(best.get("best_quality"), state.get("best_quality")):
        state = {**state, "best_quality": best["best_quality"], "best_step": best["best_step"]}
    return path, state


def _better(quality: float | None, than: float | None) -> bool:
    return quality is not None and (than is None or quality > than)


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Blocking atomic write (I/O thread only)."""
    with atomic_writer(path) as handle:
        torch.save(state, handle)


def apply_retention(directory: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest periodic checkpoints; `best.pt` is never deleted."""
    removed = []
    for _, path in list_checkpoints(directory)[keep:]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class CheckpointWriter:
    """The supervisor's checkpointer: copy on the GPU thread, write on the I/O thread, in order."""

    def __init__(self, run_dir: Path, worker: GpuWorker, store: StatsStore, config: Any) -> None:
        self.directory = Path(run_dir) / CHECKPOINT_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temps(self.directory):
            log.warning("removed %s, left by an interrupted checkpoint write", stale.name)
        self.worker = worker
        self.store = store
        self.config = config
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-io")
        self._writes: set[asyncio.Future[str]] = set()

    async def _capture(self, reason: str) -> dict[str, Any]:
        while len(self._writes) >= MAX_WRITES_IN_FLIGHT:
            await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)
        state = await self.worker.call(self.worker.engine.capture_state)
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

    def _write(self, name: str, state: dict[str, Any], keep: int | None) -> str:
        write_checkpoint(self.directory / name, state)
        if keep is not None:
            for path in apply_retention(self.directory, keep):
                log.info("checkpoint retention: removed %s", path.name)
        return name

    def _submit(self, name: str, state: dict[str, Any], keep: int | None) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        future = asyncio.ensure_future(
            loop.run_in_executor(self._io, self._write, name, state, keep)
        )
        self._writes.add(future)
        future.add_done_callback(self._written)
        return future

    def _written(self, future: asyncio.Future[str]) -> None:
        self._writes.discard(future)
        if future.cancelled():
            return
        if future.exception() is not None:
            log.error("checkpoint write failed: %s", future.exception())
            return
        self.store.checkpoint_saved(future.result())
        log.info("checkpoint saved: %s", future.result())

    async def save(self, reason: str) -> asyncio.Future[str]:
        """Copy the state now (training waits for the copy only); the write runs behind."""
        state = await self._capture(reason)
        name = checkpoint_name(state["step"])
        return self._submit(name, state, self.config.KEEP_CHECKPOINTS)

    async def save_best(self) -> asyncio.Future[str]:
        state = await self._capture("best")
        return self._submit(BEST_NAME, state, None)

    def apply_config(self, config: Any) -> None:
        self.config = config

    async def on_validation(self, step: int, result: Any, improved: bool) -> None:
        """Supervisor validation listener: a new best quality is saved as best.pt."""
        if improved:
            await self.save_best()

    async def close(self) -> None:
        """Wait for every write in flight, then stop the I/O thread."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        self._io.shutdown(wait=True)
