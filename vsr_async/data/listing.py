"""Finding a dataset's folders and image files, and counting scan progress.

Listing uses `os.scandir` (one system call per folder, no per-file `stat`) so that a scan of 100k
files spends its time on headers, not on the directory walk.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from vsr_async.errors import DatasetError
from vsr_async.names import display_name

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

ScanProgress = Callable[[int, int], None]
"""progress(done, total): files checked so far, out of all files the scan will check."""


def natural_key(name: str) -> tuple[object, ...]:
    """Sort "frame_2" before "frame_10", as a user reading the folder would."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


PathKind = Literal["missing", "file", "folder", "other"]


def os_error_reason(exc: OSError) -> str:
    """What an OSError on a dataset path means, in words (without repeating the path)."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (a link that leads back to itself)"
    if exc.errno == errno.EISDIR:
        return "is a directory, not an image file"
    return exc.strerror or str(exc)


def path_kind(path: Path) -> PathKind:
    """What `path` is, following links; a link loop or an unreadable path is a DatasetError."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as exc:
        raise DatasetError(path, os_error_reason(exc)) from None
    if stat.S_ISDIR(mode):
        return "folder"
    return "file" if stat.S_ISREG(mode) else "other"


def require_folder(path: Path, what: str) -> Path:
    """The folder, or a DatasetError that names it and says what it should hold."""
    kind = path_kind(path)
    if kind == "missing":
        raise DatasetError(path, f"missing folder ({what})")
    if kind != "folder":
        raise DatasetError(path, f"is a file, expected a folder ({what})")
    return path


def optional_folder(path: Path) -> Path | None:
    """The folder if it exists; a file in its place is an error, since the user meant a folder."""
    kind = path_kind(path)
    if kind == "missing":
        return None
    if kind != "folder":
        raise DatasetError(path, "is a file, expected a folder")
    return path


def image_names(folder: Path) -> list[str]:
    """Image file names directly in `folder`, naturally sorted; hidden files are ignored.

    An entry named like an image that is a folder, or a link loop, is an error naming it.
    """
    names = []
    for entry in _visible_entries(folder):
        is_image_name = os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
        if not is_image_name and not entry.is_symlink():
            continue  # not ours to read; a link among them is still checked for a loop
        kind = _entry_kind(folder, entry)
        if is_image_name and kind == "folder":
            raise DatasetError(Path(entry.path), "is a directory, not an image file")
        if is_image_name and kind == "file":
            names.append(entry.name)
    return sorted(names, key=natural_key)


def subfolder_names(folder: Path) -> list[str]:
    """Folder names directly in `folder`, naturally sorted; hidden folders are ignored."""
    names = [e.name for e in _visible_entries(folder) if _entry_kind(folder, e) == "folder"]
    return sorted(names, key=natural_key)


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return [e for e in entries if not e.name.startswith(".")]
    except OSError as exc:
        raise DatasetError(folder, os_error_reason(exc)) from None


def _entry_kind(folder: Path, entry: os.DirEntry[str]) -> PathKind:
    """What a listed entry is (links followed). A link to the folder itself or to a folder
    above it would make the dataset endless, so it is reported as a loop."""
    try:
        if entry.is_file():
            return "file"
        if not entry.is_dir():
            return "other"  # a broken link, a socket: not a dataset file
    except OSError as exc:  # ELOOP, EACCES: is_file/is_dir only swallow "not found"
        raise DatasetError(Path(entry.path), os_error_reason(exc)) from None
    if entry.is_symlink():
        target, here = os.path.realpath(entry.path), os.path.realpath(folder)
        if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
            raise DatasetError(
                Path(entry.path),
                f"symbolic link loop: points to {display_name(target)}, "
                "a folder that contains the link",
            )
    return "folder"


def require_images(folder: Path, what: str) -> list[str]:
    """Like `image_names`, but an empty folder is an error naming it."""
    names = image_names(folder)
    if not names:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DatasetError(folder, f"folder is empty: no images ({suffixes}) for {what}")
    return names


def require_same_names(
    first: Path, first_names: list[str], second: Path, second_names: list[str]
) -> None:
    """Every file in `first` has a same-named partner in `second`, and the other way round."""
    for folder, names, other, other_names in (
        (first, first_names, second, second_names),
        (second, second_names, first, first_names),
    ):
        present = set(other_names)
        missing = [n for n in names if n not in present]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(
                folder / missing[0],
                f"has no partner: {other / missing[0]} does not exist{more}",
            )


class ProgressCounter:
    """Calls progress(done, total) at most ~20 times a second, and always at the end."""

    def __init__(self, progress: ScanProgress | None, total: int) -> None:
        self._progress = progress
        self.total = total
        self.done = 0
        self._last_report = 0.0
        if progress is not None:
            progress(0, total)

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._progress is None:
            return
        now = time.monotonic()
        if self.done >= self.total or now - self._last_report >= 0.05:
            self._last_report = now
            self._progress(self.done, self.total)
