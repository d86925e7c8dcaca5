"""How the dashboard writes values: the same format wherever a value appears, MISSING ("–") for a
value that does not exist yet (never a made-up constant), and the styled pieces (dim labels, bold
values, bars) that a frame's lines are made of.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

MISSING = "–"  # a value that does not exist yet; never a made-up constant


def fmt(value: Any, spec: str, suffix: str = "") -> str:
    return MISSING if value is None else f"{format(value, spec)}{suffix}"


def fmt_percent(fraction: float | None, *, signed: bool = False) -> str:
    return MISSING if fraction is None else f"{fraction * 100:{'+' if signed else ''}.2f}%"


def fmt_loss(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.5f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"


def fmt_weight(value: float | None) -> str:
    return MISSING if value is None else f"×{value:.3g}"


def fmt_flag(value: bool | None, yes: str = "yes", no: str = "no") -> str:
    return MISSING if value is None else (yes if value else no)


def fmt_steps(value: int | None) -> str:
    return fmt(value, ",")


def text_line(*parts: str | tuple[str, str]) -> Text:
    """Label/value pieces: plain strings are dim labels, (text, style) pairs are values."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for part in parts:
        if isinstance(part, tuple):
            text.append(part[0], style=part[1])
        else:
            text.append(part, style="dim")
    return text


def value_part(text: str, style: str = "bold") -> tuple[str, str]:
    return text, ("dim" if text.strip() == MISSING else style)


_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of `width` cells filled to `fraction` (eighth-cell resolution)."""
    if width <= 0:
        return ""
    eighths = round(min(max(fraction, 0.0), 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)
