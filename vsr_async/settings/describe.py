"""Every key described for users, from the schema's field metadata: the run configuration file
(`config.py`, the predecessor's format: UPPERCASE constants with a comment each) and the key
listing of `python -m vsr_async config`."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from typing import Any

from vsr_async.settings.schema import Config, field_types
from vsr_async.settings.values import describe_type, range_text

# The headings of the generated file: the first key of each group → its heading.
SECTIONS = {
    "MODEL": "MODEL (start-only: a checkpoint only fits the shape it was trained with)",
    "BATCH_SIZE": "BATCH",
    "LR_EXPONENT": "LEARNING RATE",
    "L1_WEIGHT": "LOSS WEIGHTS (targets: the adaptive system moves the weights around them)",
    "MAX_STEPS": "CADENCE",
    "DATA_ROOT": "DATA",
    "ADAPTIVE_LOSS_WEIGHTS": "ADAPTIVE SYSTEM",
    "AMP": "PRECISION AND SPEED",
    "WEB_ENABLED": "WEB PANEL AND KEYBOARD",
}

FILE_HEADER = '''"""vsr_async run configuration: every key, at its default.

Edit what you need, then run `python -m vsr_async train` in this folder (it reads ./config.py)
or `python -m vsr_async train --config PATH`; `--set KEY=VALUE` overrides a key for one run.
Keys marked "live" can also be changed during a run, in the web panel. This file is Python and
is executed when loaded: load only files you trust (TOML files hold the same keys as plain data).
Written by `python -m vsr_async config --write FILE`; `python -m vsr_async config` lists the keys.
"""
'''


def literal(value: Any) -> str:
    """`value` as Python source, as a formatter would write it (double quotes, short exponents)."""
    if isinstance(value, str) and repr(value)[1:-1] == value and '"' not in value:
        return f'"{value}"'
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value))
    return repr(value)


def allowed(f: dataclasses.Field[Any]) -> str:
    """What a key accepts, in words: its type when that is not plain, its range, and "live"."""
    tp = field_types()[f.name]
    parts = [] if tp in (bool, int, float, str) else [describe_type(tp)]
    parts += [text for text in (range_text(f.metadata),) if text]
    if f.metadata["live"]:
        parts.append("live")
    return "; ".join(parts)


def config_file_text() -> str:
    """The run configuration file with every key at its default (the repository's config.py)."""
    lines = [FILE_HEADER.rstrip("\n")]
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            lines += ["", f"# {SECTIONS[f.name]}"]
        lines += textwrap.wrap(
            f.metadata["doc"],
            98,
            initial_indent="# ",
            subsequent_indent="# ",
            break_on_hyphens=False,
        )
        note = allowed(f)
        lines.append(f"{f.name} = {literal(f.default)}" + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"


def key_lines() -> list[str]:
    """`KEY = default  (range; live)` and the key's doc below it, for every key."""
    lines = []
    for f in dataclasses.fields(Config):
        note = allowed(f)
        lines.append(f"{f.name} = {literal(f.default)}" + (f"  ({note})" if note else ""))
        lines.append(f"    {f.metadata['doc']}")
    return lines
