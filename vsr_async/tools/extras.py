"""Optional packages of the tools, imported only when a tool needs them.

A tool that lacks one stops with one line naming the `pip install` that adds it (the extras are
declared in pyproject.toml; this module only says which extra holds which package).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from types import ModuleType

from vsr_async.errors import MissingExtraError

EXTRA_OF: dict[str, str] = {"av": "video", "safetensors": "export", "onnx": "export"}
"""Import name -> the pyproject extra that installs it."""


def require(module: str, needed_for: str) -> ModuleType:
    """`import module`, or a MissingExtraError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRA_OF[module]
        raise MissingExtraError(module, requirement(module, extra), extra, needed_for) from None


def requirement(module: str, extra: str) -> str:
    """The requirement pyproject declares for `module` in `extra` ("av>=12"); the bare name when
    vsr_async is not installed (run from a source tree)."""
    try:
        declared = importlib.metadata.requires("vsr_async") or []
    except importlib.metadata.PackageNotFoundError:
        return module
    for line in declared:
        spec, _, marker = line.partition(";")
        name = re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0]
        if name == module and f'extra == "{extra}"' in marker.replace("'", '"'):
            return spec.strip()
    return module
