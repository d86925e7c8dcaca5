"""The controlling terminal: cbreak input mode, saved and restored on every exit path, and a
frame writer that keeps a slow or stopped terminal from ever blocking the event loop.

Knows nothing about training; `keyboard.py` and `dashboard.py` build on it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import termios
import threading
from collections import deque
from collections.abc import Iterator
from typing import TextIO

_LFLAG, _CC = 3, 6  # indices into termios.tcgetattr()'s list

# Leave the alternate screen and show the cursor: what a hard exit writes for the dashboard.
LEAVE_FULL_SCREEN = b"\x1b[?25h\x1b[?1049l"


def is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):  # closed or detached stream
        return False


def is_foreground(fd: int) -> bool:
    """Whether this process may read the terminal on `fd` (not a background job).

    A background job that reads its terminal is stopped by SIGTTIN; one whose terminal is not
    its controlling terminal (tests use a pty) has no job control to fear.
    """
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return True


@contextlib.contextmanager
def _ttou_blocked() -> Iterator[None]:
    """tcsetattr from a background job would stop the process with SIGTTOU unless it is blocked
    (POSIX); blocking it lets a job that was moved to the background still restore the mode."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class CbreakMode:
    """Keys arrive one at a time, unechoed; Ctrl+C still raises SIGINT (ISIG stays on).

    `enter()` saves the settings it finds; `restore()` puts exactly those back. `restore` is
    idempotent and registered with `atexit` while the mode is on, so a crash that skips the
    orderly shutdown still leaves the terminal as it was.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list | None = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    def enter(self) -> None:
        saved = termios.tcgetattr(self.fd)
        if self._saved is None:
            self._saved = saved
            atexit.register(self.restore)
        self.reapply()

    def reapply(self) -> None:
        """Set cbreak again (e.g. after `fg`: the shell may have changed the mode meanwhile)."""
        if self._saved is None:
            return
        mode = termios.tcgetattr(self.fd)
        mode[_LFLAG] &= ~(termios.ECHO | termios.ICANON)
        mode[_CC] = list(mode[_CC])
        mode[_CC][termios.VMIN] = 1
        mode[_CC][termios.VTIME] = 0
        with _ttou_blocked():
            termios.tcsetattr(self.fd, termios.TCSANOW, mode)

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        atexit.unregister(self.restore)
        # TCSANOW, not TCSADRAIN: output stopped with Ctrl+S must not hang the restore.
        with _ttou_blocked(), contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self.fd, termios.TCSANOW, saved)


class FrameWriter:
    """A file for rich's Console whose every `flush()` hands one frame to a writer thread.

    A terminal can stall a writer for as long as it likes (a slow SSH link, output stopped with
    Ctrl+S); on the event loop that would stall training. Here it only stalls the thread, and
    the dashboard skips frames while `busy`.
    """

    def __init__(self, stream: TextIO) -> None:
        stream.flush()  # what was printed before stays ahead of the first frame
        self._fd = stream.fileno()
        self.encoding = stream.encoding or "utf-8"
        self._parts: list[str] = []
        self._frames: deque[bytes] = deque()
        self._writing = False
        self._closed = False
        self.broken: OSError | None = None  # the terminal went away (hang-up, closed pty)
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="terminal-writer", daemon=True)
        self._thread.start()

    # --- the file protocol rich uses ---------------------------------------------------------

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        if not self._parts:
            return
        data = "".join(self._parts).encode(self.encoding, "replace")
        self._parts.clear()
        with self._cond:
            if not self._closed and self.broken is None:
                self._frames.append(data)
                self._cond.notify_all()

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    # --- the writer thread ---------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._frames) or self._writing

    def drain(self, timeout: float) -> bool:
        """Wait until everything handed over is written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._frames and not self._writing, timeout)

    def close(self, timeout: float = 1.0) -> None:
        self.flush()
        self.drain(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._frames or self._closed)
                if not self._frames:
                    return
                data = self._frames.popleft()
                self._writing = True
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                with self._cond:
                    self.broken = exc
                    self._frames.clear()
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
