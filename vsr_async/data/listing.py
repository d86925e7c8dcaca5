"""Finding a dataset's folders and image files, and counting scan progress.

Listing uses `os.scandir` (one system call per folder, no per-file `stat`) so that a scan of 100k
files spends its time on headers, not on the directory walk.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from vsr_async.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

ScanProgress = Callable[[int, int], None]
"""progress(done, total): files checked so far, out of all files the scan will check."""


def natural_key(name: str) -> tuple[object, ...]:
    """Sort "frame_2" before "frame_10", as a user reading the folder would."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def require_folder(path: Path, what: str) -> Path:
    """The folder, or a DatasetError that names it and says what it should hold."""
    if not path.exists():
        raise DatasetError(path, f"missing folder ({what})")
    if not path.is_dir():
        raise DatasetError(path, f"is a file, expected a folder ({what})")
    return path


def optional_folder(path: Path) -> Path | None:
    """The folder if it exists; a file in its place is an error, since the user meant a folder."""
    if not path.exists():
        return None
    if not path.is_dir():
        raise DatasetError(path, "is a file, expected a folder")
    return path


def image_names(folder: Path) -> list[str]:
    """Image file names directly in `folder`, naturally sorted; hidden files are ignored."""
    with os.scandir(folder) as entries:
        names = [
            e.name
            for e in entries
            if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
            and e.is_file()
        ]
    return sorted(names, key=natural_key)


def subfolder_names(folder: Path) -> list[str]:
    """Folder names directly in `folder`, naturally sorted; hidden folders are ignored."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
    return sorted(names, key=natural_key)


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
