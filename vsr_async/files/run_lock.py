"""run_lock.py: one process per run folder, through an OS lock on `DATA_ROOT/.vsr_async.lock`.

`flock` belongs to the open file, so the kernel drops it when the process ends however it ends
(SIGKILL included): a lock file left behind never blocks a new run. A forked child closes its
copy at once (exec'd ones never get it), so one that outlives a killed run cannot keep the
folder. The file holds the holder's PID and host, only for the message the second process
prints; it is never deleted (deleting a lock file races with a process that has just opened it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from vsr_async.errors import ConfigError

LOCK_NAME = ".vsr_async.lock"
PID_WAIT_S = 0.5  # a holder writes its PID right after taking the lock; wait that long for it
PROBE_GRACE_S = 0.2  # how long a momentary shared lock (a probe) may delay taking the lock
# File systems that cannot lock (some FUSE and SMB mounts): the run goes on, with a warning.
NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}

_held_fds: set[int] = set()  # closed in forked children (see module docstring)


def _close_in_child() -> None:
    for fd in _held_fds:
        with contextlib.suppress(OSError):
            os.close(fd)  # this copy only: the parent's lock stays (never LOCK_UN here)
    _held_fds.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """An exclusive lock on one run folder; `release()` (or the process's end) gives it up.

    `warning` is set when the file system cannot lock: the folder is then not protected.
    """

    def __init__(self, directory: Path, fd: int, warning: str | None = None) -> None:
        self.directory = directory
        self.warning = warning
        self._fd: int | None = fd
        _held_fds.add(fd)

    @classmethod
    def acquire(cls, directory: Path) -> RunLock:
        """Take the folder or fail in one line: in use (naming the PID), or not writable."""
        path = directory / LOCK_NAME
        try:  # no O_TRUNC: the holder's PID must stay readable until we hold the lock
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(
                "DATA_ROOT", f"cannot write to {directory}: {exc.strerror} ({path})"
            ) from None
        warning = None
        try:
            _lock_exclusive(fd)
        except BlockingIOError:
            os.close(fd)
            raise folder_busy(directory) from None
        except OSError as exc:
            if exc.errno not in NO_LOCKING:
                os.close(fd)
                raise ConfigError("DATA_ROOT", f"cannot lock {path}: {exc.strerror}") from None
            warning = (
                f"cannot lock {path} ({exc.strerror}): this file system does not stop a second "
                "run from using the same folder"
            )
        lock = cls(directory, fd, warning)
        lock._write_holder()
        return lock

    def _write_holder(self) -> None:
        assert self._fd is not None
        text = f"{os.getpid()} {socket.gethostname()}\n"
        with contextlib.suppress(OSError):  # a full disk: the lock holds, only the PID is missing
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode("utf-8", "backslashreplace"), 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Closing the descriptor drops the lock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _held_fds.discard(fd)
            os.close(fd)

    def __del__(self) -> None:  # a run that was built but never executed
        with contextlib.suppress(Exception):  # also at interpreter exit
            self.release()


def _lock_exclusive(fd: int) -> None:
    """LOCK_EX, retried briefly: another start's `folder_in_use` probe holds LOCK_SH for an
    instant, and that must not read as a run holding the folder."""
    deadline = time.monotonic() + PROBE_GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def folder_in_use(directory: Path) -> bool:
    """Whether a live process holds the folder's lock (a stale or missing lock file: no).

    Reads only: the probe opens the file read-only and creates nothing, so an earlier run's
    folder is left exactly as it was.
    """
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without locks: nothing to tell
        return False
    finally:
        os.close(fd)  # a shared lock taken here is dropped with the descriptor
    return False


def folder_busy(directory: Path) -> ConfigError:
    """The one line for a folder that another process holds, naming that process."""
    return ConfigError(
        "DATA_ROOT",
        f"{directory} is in use by another vsr_async run ({describe_holder(directory)}); stop "
        "that run or choose another DATA_ROOT",
    )


def describe_holder(directory: Path) -> str:
    """`PID 1234`, with `on host NAME` when it runs on another machine (a shared folder)."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        try:
            fields = (directory / LOCK_NAME).read_text("utf-8", "backslashreplace").split()
        except OSError:
            fields = []
        if fields and fields[0].isdigit():
            host = fields[1] if len(fields) > 1 else ""
            elsewhere = host and host != socket.gethostname()
            return f"PID {fields[0]}" + (f" on host {host}" if elsewhere else "")
        if time.monotonic() >= deadline:
            return "PID unknown"
        time.sleep(0.02)
