"""Checkpoints in DATA_ROOT/checkpoints: atomic files that hold everything a run needs to continue.

State is copied on the GPU thread (`TrainingEngine.capture_state`), then written here by one I/O
thread: temp file in the same directory, fsync, rename, directory fsync — never `torch.save`
straight onto the target. Files hold only tensors and plain Python values, so they load with
`torch.load(weights_only=True)`.

Retention deletes only this run's own older files: the periodic checkpoints this process wrote,
plus its resumed lineage (files in this folder at or below the resume step that load and carry
the run's run_id, when it resumed from a file in this folder). It keeps the KEEP_CHECKPOINTS
newest of those; everything else (files of other runs, files above the resume step it did not
write, files that fail to load, `best.pt`) is left alone. `best.pt` is replaced only by a model
whose quality beats the one it holds.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import re
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x1f\x7f]")


def _why_unloadable(path: Path, exc: Exception) -> str:
    """A few plain words on why torch could not load a file (its own text runs to paragraphs of
    advice about weights_only, sometimes with terminal colour codes)."""
    if _size(path) == 0:
        return "the file is empty"
    if isinstance(exc, pickle.UnpicklingError):
        return "not a vsr_async checkpoint (not a PyTorch file of tensors and plain values)"
    if isinstance(exc, EOFError):
        return "the file ends early (truncated)"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, RuntimeError | OSError):  # miniz/zip errors, reads past a cut-off end
        return "damaged or not a vsr_async checkpoint (an incomplete or foreign archive)"
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    detail = _ANSI.sub("", first).strip()[:120]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def check_archive(path: Path) -> None:
    """Cheap first look (a few KB): every checkpoint is a PyTorch zip archive. The full check is
    `load_checkpoint`, on the GPU thread."""
    try:
        with open(path, "rb") as handle:
            empty, archive = handle.read(1) == b"", zipfile.is_zipfile(handle)
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read: {exc.strerror}") from None
    if empty:
        raise CheckpointError(path, "cannot be loaded: the file is empty")
    if not archive:
        raise CheckpointError(
            path,
            "cannot be loaded: not a vsr_async checkpoint, or a damaged one (no complete "
            "PyTorch archive)",
        )


def load_checkpoint(path: Path, *, lazy: bool = False) -> dict[str, Any]:
    """Load and verify one file; any damage (truncation, wrong content) is a one-line
    CheckpointError naming the file. `lazy` maps the tensors from the file instead of reading
    them: milliseconds for a large file, for callers that only need its step, run_id or quality."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except Exception as exc:  # torch raises many types for damaged zips and bad pickles
        raise CheckpointError(path, f"cannot be loaded: {_why_unloadable(path, exc)}") from None
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


def retention_victims(candidates: dict[str, int], keep: int, newest_own: str | None) -> list[str]:
    """Names to delete: all but the `keep` highest steps of `candidates`, never `newest_own`."""
    ranked = sorted(candidates.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return [name for name, _ in ranked[max(keep, 1) :] if name != newest_own]


@dataclass
class RetentionScope:
    """Which files in the checkpoint folder retention may ever delete (I/O thread only).

    `own`: periodic checkpoints this process wrote (name -> step). `lineage`: files of the run
    it resumed, at or below the resume step, found once on the first retention pass.
    """

    own: dict[str, int] = field(default_factory=dict)
    lineage: dict[str, int] | None = None  # None: not looked for yet

    def candidates(self) -> dict[str, int]:
        return {**(self.lineage or {}), **self.own}

    def newest_own(self) -> str | None:
        return max(self.own, key=lambda name: self.own[name]) if self.own else None

    def forget(self, name: str) -> None:
        self.own.pop(name, None)
        if self.lineage is not None:
            self.lineage.pop(name, None)


def find_lineage(directory: Path, resumed: Any, own: dict[str, int]) -> dict[str, int]:
    """Files of the resumed run that retention may delete: only when it resumed from a file in
    `directory`, at or below its step, loading and carrying its run_id. A file that fails to
    load is reported (once: this runs once per process) and left alone."""
    source = getattr(resumed, "source", None)
    if source is None or Path(source).resolve().parent != Path(directory).resolve():
        return {}
    lineage = {}
    for step, path in list_checkpoints(directory):
        if path.name in own or step > resumed.step:
            continue
        try:
            state = load_checkpoint(path, lazy=True)
        except CheckpointError as exc:
            log.warning("checkpoint retention: leaving %s alone: %s", path.name, exc)
            continue
        if state["run_id"] == resumed.run_id and state["step"] == step:
            lineage[path.name] = step
    return lineage


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
        self._writes: set[asyncio.Future[str | None]] = set()
        self._scope = RetentionScope()  # touched on the I/O thread only
        self._resumed: Any = None  # what the engine resumed from (read once, at the first save)
        self._best_on_disk: float | None = None  # quality best.pt holds; read at the first best
        self._best_read = False
        self._last_save: tuple[tuple[Any, ...], asyncio.Future[str | None]] | None = None

    def _state_key(self) -> tuple[Any, ...]:
        """What a checkpoint's content depends on besides training steps (read between GPU
        calls, like the supervisor's reads of the engine)."""
        v = self.store.validation
        return (getattr(self.worker.engine, "step", None), v.count, v.best_quality, self.config)

    async def _capture(self, reason: str) -> dict[str, Any]:
        while len(self._writes) >= MAX_WRITES_IN_FLIGHT:
            await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)
        state = await self.worker.call(self.worker.engine.capture_state)
        if self._resumed is None:
            self._resumed = getattr(self.worker.engine, "resumed", None)
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
        if stored is not None and not _better(quality, stored):
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
        if future.result() is not None:
            self.store.checkpoint_saved(future.result())

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
