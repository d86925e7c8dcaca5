"""One dashboard frame: the snapshot laid out for a terminal (80 columns and up), and the
formatting of its values. Everything shown comes from the snapshot (a `Snapshot`, so every key read
here is one a type checker knows); a value that does not exist yet is "–", never a made-up constant.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.text import Text

from vsr_async.runtime.snapshot import Snapshot

MISSING = "–"  # a value that does not exist yet; never a made-up constant

KEYS_LINE = "v validate · p pause/resume · c checkpoint · s view · h help · q stop"
HELP_LINES = (
    ("v", "validate now: writes Statistik_<step>.json (trigger keyboard)"),
    ("p", "pause training / resume it"),
    ("c", "save a checkpoint now"),
    ("s", "layer activity: grouped by direction / sorted by activity"),
    ("h", "show / hide this help"),
    ("q", "stop training (asks again: y stops, any other key continues)"),
    ("Ctrl+C", "stop after this step; a second Ctrl+C exits at once"),
)
HELP_NOTE = "Keys are queued at once and run at the next step boundary."


class ActivityView(enum.Enum):
    """How the layer activity bars are ordered (`s` switches)."""

    BY_DIRECTION = "grouped by direction"
    BY_ACTIVITY = "sorted by activity"


# --- formatting: MISSING for None, the same format wherever a value appears -------------------


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


def _line(*parts: str | tuple[str, str]) -> Text:
    """Label/value pieces: plain strings are dim labels, (text, style) pairs are values."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for part in parts:
        if isinstance(part, tuple):
            text.append(part[0], style=part[1])
        else:
            text.append(part, style="dim")
    return text


def _value(text: str, style: str = "bold") -> tuple[str, str]:
    return text, ("dim" if text.strip() == MISSING else style)


_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of `width` cells filled to `fraction` (eighth-cell resolution)."""
    if width <= 0:
        return ""
    eighths = round(min(max(fraction, 0.0), 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)


# --- the frame: one snapshot laid out for the console's current size ---------------------------


class FrameOwner(Protocol):
    """What a frame reads of the `Dashboard` that draws it (a Protocol, so this module never
    imports the dashboard back)."""

    view: ActivityView
    help_visible: bool
    keyboard_active: bool
    keyboard_note: str

    def panel_url(self, snapshot: Snapshot) -> str: ...

    def current_message(self) -> tuple[str, str] | None: ...


class DashboardFrame:
    """A rich renderable; sections are dropped (least important first) to fit the height."""

    def __init__(self, dashboard: FrameOwner, snapshot: Snapshot) -> None:
        self.d = dashboard
        self.s = snapshot

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        height = options.height or console.height
        # Lines are cut to the width here and handed over as segments: no wrapping pass, which
        # keeps a frame cheap on the event loop.
        for index, line in enumerate(self.lines(width, height)):
            if index:
                yield Segment.line()
            line.truncate(width, overflow="ellipsis")
            yield from line.render(console)

    def lines(self, width: int, height: int) -> list[Text]:
        top = [self.header(), self.progress(width)]
        footer = [*self.files(), self.status(), self.keys()]
        middle: list[tuple[int, list[Text]]]  # (drop rank: lowest goes first, lines)
        if self.d.help_visible:
            middle = [(9, self.help())]
        else:
            middle = [
                (4, [self.timing()]),
                (2, [self.lr_memory()]),
                (3, self.losses()),
                (1, [self.adaptive()]),
                (5, self.validation()),
            ]
        room = height - len(top) - len(footer)
        for rank in sorted({rank for rank, _ in middle}):
            if sum(len(lines) for _, lines in middle) <= room:
                break
            middle = [(r, lines) for r, lines in middle if r != rank]
        body = [line for _, lines in middle for line in lines]
        if not self.d.help_visible and room - len(body) >= 2:
            body += self.layers(width, room - len(body))
        return [*top, *body, *footer][:height]

    # --- sections ------------------------------------------------------------------------------

    def phase(self) -> tuple[str, str]:
        s = self.s
        phase = s["run_phase"]
        if s["validation_running"]:
            return f"VALIDATING {s['validation_progress'] * 100:.0f}%", "bold magenta"
        styles = {"running": "bold green", "paused": "bold yellow", "starting": "bold cyan"}
        return phase.upper(), styles.get(phase, "bold red")

    def header(self) -> Text:
        return _line(
            ("vsr_async", "bold"), "  run ", _value(self.s["run_id"], ""), "  ", self.phase()
        )

    def progress(self, width: int) -> Text:
        s = self.s
        step, step_max = s["step_current"], s["step_max"]
        fraction = step / step_max if step_max else 0.0
        head = _line("step ", _value(fmt_steps(step)), "/", _value(fmt_steps(step_max), ""), " ")
        tail = _line(f" {fraction * 100:5.1f}%  ETA ", _value(fmt(s["eta_total_formatted"], "")))
        cells = max(width - head.cell_len - tail.cell_len, 0)
        filled = round(fraction * cells)
        head.append("━" * filled, style="green")
        head.append("━" * (cells - filled), style="grey23")
        return head + tail

    def timing(self) -> Text:
        s = self.s
        duration = s["iteration_duration"]
        speed = (
            _value(f"{1 / duration:.2f} it/s · {duration:.3f} s/it")
            if duration
            else _value(MISSING)
        )
        return _line(
            "epoch ",
            _value(fmt(s["epoch_num"], "d")),
            " · ",
            _value(f"{fmt_steps(s['epoch_step_current'])}/{fmt_steps(s['epoch_step_total'])}", ""),
            "  epoch ETA ",
            _value(fmt(s["eta_epoch_formatted"], ""), ""),
            "   speed ",
            speed,
        )

    def lr_memory(self) -> Text:
        s = self.s
        return _line(
            "LR ",
            _value(fmt(s["learning_rate_value"], ".2e")),
            " (",
            _value(fmt(s["lr_phase_name"], ""), ""),
            ")   VRAM ",
            _value(fmt(s["vram_usage_gb"], ".2f", " GB")),
            "  RAM ",
            _value(fmt(s["host_memory_gb"], ".2f", " GB")),
            "   clip ",
            _value(fmt(s["gradient_clip_val"], ".3g"), ""),
        )

    def losses(self) -> list[Text]:
        s = self.s
        columns = (  # name, loss, weight ("" for the total, which has none)
            ("total", s["total_loss_value"], ""),
            ("L1", s["l1_loss_value"], fmt_weight(s["l1_weight_current"])),
            ("MS", s["ms_loss_value"], fmt_weight(s["ms_weight_current"])),
            ("gradient", s["gradient_loss_value"], fmt_weight(s["gradient_weight_current"])),
            ("perceptual", s["perceptual_loss_value"], fmt_weight(s["perceptual_weight_current"])),
        )
        names, values, weights = _line("losses  "), _line("  value "), _line("  weight")
        for name, loss, weight in columns:
            names.append(f"{name:>12}", style="dim")
            values.append_text(_line(_value(f"{fmt_loss(loss):>12}")))
            weights.append_text(_line(_value(f"{weight:>12}", "")))
        return [names, values, weights]

    def adaptive(self) -> Text:
        s = self.s
        return _line(
            "adaptive ",
            _value(fmt(s["adaptive_mode"], ""), "bold cyan"),
            "  cooldown ",
            _value(
                MISSING
                if s["adaptive_is_cooldown"] is None
                else f"{fmt_flag(s['adaptive_is_cooldown'])} ({s['adaptive_cooldown_remaining']})",
                "",
            ),
            "  plateau ",
            _value(fmt(s["adaptive_plateau_counter"], "d"), ""),
            "  LR boost ",
            _value(fmt_flag(s["adaptive_lr_boost_available"], "ready", "used"), ""),
            "  trend ",
            _value(fmt(s["adaptive_perceptual_trend"], "+.4f"), ""),
        )

    def validation(self) -> list[Text]:
        s = self.s
        if s["validation_count"] == 0 and s["validation_step"] is None:
            state = "running" if s["validation_running"] else "none yet (v validates now)"
            return [_line("validation ", _value(state, ""))]
        improvement = s["quality_improvement_value"]
        gain = "green" if improvement is not None and improvement > 0 else "red"
        return [
            _line(
                "validation #",
                _value(fmt(s["validation_count"], "d"), ""),
                " at step ",
                _value(fmt_steps(s["validation_step"]), ""),
                " (",
                _value(fmt(s["validation_trigger"], ""), ""),
                ")   best ",
                _value(fmt_percent(s["best_quality_ever"]), ""),
                " at step ",
                _value(fmt_steps(s["best_quality_step"]), ""),
            ),
            _line(
                "  quality LR ",
                _value(fmt_percent(s["quality_lr_value"])),
                " → output ",
                _value(fmt_percent(s["quality_ki_value"])),
                "   improvement ",
                _value(fmt_percent(improvement, signed=True), f"bold {gain}"),
            ),
            _line(
                "  PSNR ",
                _value(fmt(s["psnr_lr_db"], ".2f")),
                " → ",
                _value(fmt(s["psnr_ki_db"], ".2f", " dB")),
                " (",
                _value(fmt(s["psnr_gain_db"], "+.2f"), ""),
                ")   SSIM ",
                _value(fmt(s["ssim_lr"], ".4f")),
                " → ",
                _value(fmt(s["ssim_ki"], ".4f")),
            ),
        ]

    def layers(self, width: int, rows: int) -> list[Text]:
        """Title plus `rows - 1` lines of bars; the last line says how many did not fit."""
        activity = self.s["layer_activity_map"]
        if not activity:
            return [_line("layer activity ", _value(MISSING))]
        view = self.d.view
        title = _line("layer activity ", _value(view.value, ""), "  (s switches)")
        ncols = max(1, min(3, width // 38))
        data_rows = rows - 1
        if len(activity) > data_rows * ncols:
            data_rows -= 1  # keep the last line for "… N more"
        columns = [c[:data_rows] for c in self._activity_columns(activity, view, ncols)]
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
            lines.append(_line(f"… {hidden} more layers (a taller terminal shows them)"))
        return [title, *lines]

    @staticmethod
    def _activity_columns(
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

    def files(self) -> list[Text]:
        s = self.s
        lines = [
            _line(
                "panel ",
                _value(self.d.panel_url(s), "underline"),
                "  stats ",
                _value(fmt(s["last_statistics_written"], ""), ""),
                "  ckpt ",
                _value(fmt(s["last_checkpoint"], ""), ""),
            )
        ]
        if s["last_statistics_error"]:
            lines.append(_line(("statistics write failed: " + s["last_statistics_error"], "red")))
        return lines

    def status(self) -> Text:
        queued = self.s["pending_commands"]
        line = _line("queued ", _value(", ".join(queued) if queued else "none", "yellow"))
        message = self.d.current_message()
        if message is not None:
            text, style = message
            line.append("   ")
            line.append(text, style=style)
        return line

    def keys(self) -> Text:
        if self.d.keyboard_active:
            return _line(("keys ", "dim"), (KEYS_LINE, "bold"))
        return _line(f"keyboard off ({self.d.keyboard_note}) · Ctrl+C stops")

    def help(self) -> list[Text]:
        lines = [_line(("Keys", "bold underline"), "  (h closes)")]
        lines += [_line((f"  {key:<7}", "bold"), (text, "")) for key, text in HELP_LINES]
        return [*lines, _line(HELP_NOTE)]


def _short_layer_name(name: str) -> str:
    """Backward_Block_01 -> B01, Forward_Block_12 -> F12, Final_Fusion -> Fusion."""
    head, _, number = name.rpartition("_")
    if number.isdigit():
        return f"{head[:1]}{number}"
    return name.rpartition("_")[2][:6]
