"""Atomic, durable file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader (or a crash, or `kill -9`) sees either the old complete file or the new complete file,
plus at most a leftover temp file that `remove_stale_temps` deletes at the next start. The async
variant writes through aiofiles so the event loop never blocks on the disk; the sync variant is
for the I/O thread (checkpoints).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import aiofiles
import aiofiles.os

TEMP_SUFFIX = ".tmp"


def temp_path_for(target: Path) -> Path:
    """A unique hidden temp name next to `target` (same directory, so rename is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def fsync_path(path: Path) -> None:
    """fsync a file or directory by name (a directory: its renames become durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (the new directory entry reaches the disk)."""
    fsync_path(directory)


@contextlib.contextmanager
def atomic_writer(target: Path) -> Iterator[BinaryIO]:
    """Yield a binary file; on a clean exit it replaces `target` atomically and durably
    (`atomic_path` with the file opened for the caller).

    On an exception the temp file is removed and `target` is untouched.
    """
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        yield handle


def write_atomic(target: Path, data: bytes) -> None:
    """Blocking atomic write; call it from an I/O thread, never from the event loop."""
    with atomic_writer(target) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp file path next to `target`, for writers that want a name (FFmpeg's muxers).

    On a clean exit the file the caller wrote there is fsynced and renamed onto `target`; on an
    exception (or Ctrl+C) it is removed and `target` is untouched.
    """
    target = Path(target)
    tmp = temp_path_for(target)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(target.parent)


@contextlib.contextmanager
def atomic_folder(target: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a new temp folder next to `target`; on a clean exit its files are fsynced and it is
    renamed to `target` (an existing `target` is replaced only with `replace`: moved aside,
    then deleted). On an exception the temp folder and everything in it are removed."""
    target = Path(target)
    tmp = temp_path_for(target)
    tmp.mkdir()
    try:
        yield tmp
        for path in tmp.iterdir():
            fsync_path(path)
        fsync_directory(tmp)
        old = temp_path_for(target) if replace and target.exists() else None
        if old is not None:
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(target.parent)
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink()


class DaemonThreadExecutor(concurrent.futures.Executor):
    """Runs each call in a new daemon thread.

    `asyncio.run` joins the default executor's threads at exit, so one write hung on a dead
    mount would keep the process alive for ever; a daemon thread is abandoned instead.
    """

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to whoever awaits the future
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=work, name="io-daemon", daemon=True).start()
        return future


async def write_atomic_async(
    target: Path, data: bytes, executor: concurrent.futures.Executor | None = None
) -> None:
    """Atomic write through aiofiles: every blocking call runs in `executor` (aiofiles' default
    executor when None)."""
    target = Path(target)
    tmp = temp_path_for(target)
    try:
        async with aiofiles.open(tmp, "wb", executor=executor) as handle:
            await handle.write(data)
            await handle.flush()
            await aiofiles.os.wrap(os.fsync)(handle.fileno(), executor=executor)
        await aiofiles.os.replace(tmp, target, executor=executor)
    except BaseException:
        with contextlib.suppress(OSError):
            await aiofiles.os.remove(tmp, executor=executor)
        raise
    await aiofiles.os.wrap(fsync_directory)(target.parent, executor=executor)


def remove_stale_temps(directory: Path, prefix: str = ".") -> list[Path]:
    """Delete temp files that a crash left behind (names from `temp_path_for`); return them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        if path.name.startswith(prefix) and path.name.endswith(TEMP_SUFFIX) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
