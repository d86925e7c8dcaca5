"""File names of any bytes, made printable: the one place where a name that is not valid UTF-8
(`os.fsdecode` gives surrogate escapes such as '\\udcff') becomes visible `\\xff` text.

Everything that leaves the process as UTF-8 (the snapshot, Statistik files, HTTP answers, `check`)
shows names through `display_name`, so one odd name can never break serialisation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import PurePath
from typing import Any


def is_valid_text(text: str) -> bool:
    """True if `text` encodes to UTF-8 as it is (no surrogate escapes from undecodable bytes)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str | PurePath | bytes) -> str:
    """`name` as valid UTF-8 text: undecodable bytes become `\\xff`, other text is unchanged.

    b'\\xff\\xfe.png' (or its fsdecoded str '\\udcff\\udcfe.png') -> '\\\\xff\\\\xfe.png'.
    """
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    text = os.fspath(name)
    if is_valid_text(text):
        return text
    try:  # surrogate escapes from os.fsdecode: back to the original bytes, then escape those
        raw = os.fsencode(text)
    except UnicodeEncodeError:  # a lone surrogate from elsewhere (e.g. JSON "\ud800")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode(sys.getfilesystemencoding(), "backslashreplace")


def displayable(value: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, strings) with every string made valid UTF-8."""
    if isinstance(value, str):
        return display_name(value)
    if isinstance(value, dict):
        return {displayable(k): displayable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [displayable(v) for v in value]
    return value


def undecodable_names(paths: Iterable[str | PurePath]) -> list[str]:
    """The paths among `paths` that are not valid UTF-8, escaped for display, in order, once."""
    seen: dict[str, None] = {}
    for path in paths:
        text = os.fspath(path)
        if not is_valid_text(text):
            seen.setdefault(display_name(text), None)
    return list(seen)
