"""Output paths of the tools, checked before any work starts, so a typo costs a second, not a
finished evaluation: the folder must exist and be writable, and the name must not be a folder."""

from __future__ import annotations

import os
from pathlib import Path

from vsr_async.errors import OptionError
from vsr_async.names import display_name


def require_output_file(option: str, path: Path) -> Path:
    """A file the tool will write (atomically, replacing an earlier one)."""
    _require_plain(option, path)
    if path.is_dir():
        raise OptionError(option, f"{display_name(path)} is a folder; name a file")
    _require_writable_parent(option, path)
    return path


def require_output_folder(option: str, path: Path) -> Path:
    """A folder the tool fills: it may exist (a run to resume) or not yet (its parent must)."""
    _require_plain(option, path)
    if path.exists() and not path.is_dir():
        raise OptionError(option, f"{display_name(path)} is a file; name a folder")
    _require_writable_parent(option, path)
    return path


def _require_plain(option: str, path: Path) -> None:
    if "\x00" in str(path):
        raise OptionError(option, f"path contains a NUL byte: {str(path)!r}")


def _require_writable_parent(option: str, path: Path) -> None:
    parent = path.absolute().parent
    shown = display_name(parent)
    if not parent.exists():
        raise OptionError(option, f"folder {shown} does not exist (create it first)")
    if not parent.is_dir():
        raise OptionError(option, f"{shown} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(option, f"cannot write into {shown}: permission denied")
