"""The dashboard's layer activity section: one bar per block, grouped by direction (backward,
forward, the rest) or sorted by activity (`s` switches), in as many columns as the width allows
and as many rows as the frame leaves it.
"""

from __future__ import annotations

import enum

from rich.text import Text

from vsr_async.terminal.formatting import MISSING, bar, fmt, text_line, value_part


class ActivityView(enum.Enum):
    """How the layer activity bars are ordered (`s` switches)."""

    BY_DIRECTION = "grouped by direction"
    BY_ACTIVITY = "sorted by activity"


def activity_lines(
    activity: dict[str, float | None], view: ActivityView, width: int, rows: int
) -> list[Text]:
    """Title plus `rows - 1` lines of bars; the last line says how many did not fit."""
    if not activity:
        return [text_line("layer activity ", value_part(MISSING))]
    title = text_line("layer activity ", value_part(view.value, ""), "  (s switches)")
    ncols = max(1, min(3, width // 38))
    data_rows = rows - 1
    if len(activity) > data_rows * ncols:
        data_rows -= 1  # keep the last line for "… N more"
    columns = [c[:data_rows] for c in _columns(activity, view, ncols)]
    top = max((v for v in activity.values() if v is not None), default=0.0) or 1.0
    cell_width = (width - (ncols - 1)) // ncols
    name_width = max(len(name) for name in activity) if cell_width >= 38 else 6
    bar_width = cell_width - name_width - 10
    lines = []
    for row in range(max((len(c) for c in columns), default=0)):
        line = Text(no_wrap=True, overflow="ellipsis")
        for col, column in enumerate(columns):
            if row >= len(column):
                continue
            name, value = column[row]
            label = name if name_width > 6 else _short_layer_name(name)
            line.append(" " * bool(col) + f"{label:<{name_width}} ", style="dim")
            line.append(bar((value or 0.0) / top, bar_width), style="cyan")
            line.append(f" {fmt(value, '.4g'):>8}")
        lines.append(line)
    hidden = len(activity) - sum(len(c) for c in columns)
    if hidden:
        lines.append(text_line(f"… {hidden} more layers (a taller terminal shows them)"))
    return [title, *lines]


def _columns(
    activity: dict[str, float | None], view: ActivityView, ncols: int
) -> list[list[tuple[str, float | None]]]:
    """Full columns (the caller cuts them to the rows it has)."""
    items = list(activity.items())
    if view is ActivityView.BY_ACTIVITY:
        items.sort(key=lambda kv: -(kv[1] if kv[1] is not None else float("-inf")))
        per_column = -(-len(items) // ncols)
        return [items[i * per_column : (i + 1) * per_column] for i in range(ncols)]
    backward = [kv for kv in items if kv[0].startswith("Backward")]
    forward = [kv for kv in items if kv[0].startswith("Forward")]
    rest = [kv for kv in items if kv not in backward and kv not in forward]
    if ncols == 1:
        return [backward + forward + rest]
    return [backward + rest, forward]


def _short_layer_name(name: str) -> str:
    """Backward_Block_01 -> B01, Forward_Block_12 -> F12, Final_Fusion -> Fusion."""
    head, _, number = name.rpartition("_")
    if number.isdigit():
        return f"{head[:1]}{number}"
    return name.rpartition("_")[2][:6]
