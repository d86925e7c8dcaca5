"""One dashboard frame: the snapshot laid out for a terminal (80 columns and up), its values
written by `formatting`. Everything shown comes from the snapshot (a `Snapshot`, so every key read
here is one a type checker knows); a value that does not exist yet is "–", never a made-up constant.
"""

from __future__ import annotations

from typing import Protocol

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.text import Text

from vsr_async.runtime.snapshot import Snapshot
from vsr_async.terminal.activity import ActivityView, activity_lines
from vsr_async.terminal.formatting import (
    MISSING,
    fmt,
    fmt_flag,
    fmt_loss,
    fmt_percent,
    fmt_steps,
    fmt_weight,
    text_line,
    value_part,
)

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
        return text_line(
            ("vsr_async", "bold"),
            "  run ",
            value_part(self.s["run_id"], ""),
            "  ",
            self.phase(),
            *self.job(),
        )

    def job(self) -> list[str | tuple[str, str]]:
        """The job's shape: the rank count only for a torchrun job of several ranks, the global
        batch (the samples of one optimizer step) always."""
        s = self.s
        parts: list[str | tuple[str, str]] = ["  "]
        if (ranks := s["world_size"]) is not None and ranks > 1:
            parts += ["ranks ", value_part(str(ranks), "bold cyan"), " · "]
        return [*parts, "global batch ", value_part(fmt(s["global_batch"], ","), "")]

    def progress(self, width: int) -> Text:
        s = self.s
        step, step_max = s["step_current"], s["step_max"]
        fraction = step / step_max if step_max else 0.0
        head = text_line(
            "step ", value_part(fmt_steps(step)), "/", value_part(fmt_steps(step_max), ""), " "
        )
        tail = text_line(
            f" {fraction * 100:5.1f}%  ETA ", value_part(fmt(s["eta_total_formatted"], ""))
        )
        cells = max(width - head.cell_len - tail.cell_len, 0)
        filled = round(fraction * cells)
        head.append("━" * filled, style="green")
        head.append("━" * (cells - filled), style="grey23")
        return head + tail

    def timing(self) -> Text:
        s = self.s
        duration = s["iteration_duration"]
        speed = (
            value_part(f"{1 / duration:.2f} it/s · {duration:.3f} s/it")
            if duration
            else value_part(MISSING)
        )
        return text_line(
            "epoch ",
            value_part(fmt(s["epoch_num"], "d")),
            " · ",
            value_part(
                f"{fmt_steps(s['epoch_step_current'])}/{fmt_steps(s['epoch_step_total'])}", ""
            ),
            "  epoch ETA ",
            value_part(fmt(s["eta_epoch_formatted"], ""), ""),
            "   speed ",
            speed,
        )

    def lr_memory(self) -> Text:
        s = self.s
        return text_line(
            "LR ",
            value_part(fmt(s["learning_rate_value"], ".2e")),
            " (",
            value_part(fmt(s["lr_phase_name"], ""), ""),
            ")   VRAM ",
            value_part(fmt(s["vram_usage_gb"], ".2f", " GB")),
            "  RAM ",
            value_part(fmt(s["host_memory_gb"], ".2f", " GB")),
            "   clip ",
            value_part(fmt(s["gradient_clip_val"], ".3g"), ""),
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
        names, values, weights = text_line("losses  "), text_line("  value "), text_line("  weight")
        for name, loss, weight in columns:
            names.append(f"{name:>12}", style="dim")
            values.append_text(text_line(value_part(f"{fmt_loss(loss):>12}")))
            weights.append_text(text_line(value_part(f"{weight:>12}", "")))
        return [names, values, weights]

    def adaptive(self) -> Text:
        s = self.s
        return text_line(
            "adaptive ",
            value_part(fmt(s["adaptive_mode"], ""), "bold cyan"),
            "  cooldown ",
            value_part(
                MISSING
                if s["adaptive_is_cooldown"] is None
                else f"{fmt_flag(s['adaptive_is_cooldown'])} ({s['adaptive_cooldown_remaining']})",
                "",
            ),
            "  plateau ",
            value_part(fmt(s["adaptive_plateau_counter"], "d"), ""),
            "  LR boost ",
            value_part(fmt_flag(s["adaptive_lr_boost_available"], "ready", "used"), ""),
            "  trend ",
            value_part(fmt(s["adaptive_perceptual_trend"], "+.4f"), ""),
        )

    def validation(self) -> list[Text]:
        s = self.s
        if s["validation_count"] == 0 and s["validation_step"] is None:
            state = "running" if s["validation_running"] else "none yet (v validates now)"
            return [text_line("validation ", value_part(state, ""))]
        improvement = s["quality_improvement_value"]
        gain = "green" if improvement is not None and improvement > 0 else "red"
        return [
            text_line(
                "validation #",
                value_part(fmt(s["validation_count"], "d"), ""),
                " at step ",
                value_part(fmt_steps(s["validation_step"]), ""),
                " (",
                value_part(fmt(s["validation_trigger"], ""), ""),
                ")   best ",
                value_part(fmt_percent(s["best_quality_ever"]), ""),
                " at step ",
                value_part(fmt_steps(s["best_quality_step"]), ""),
            ),
            text_line(
                "  quality LR ",
                value_part(fmt_percent(s["quality_lr_value"])),
                " → output ",
                value_part(fmt_percent(s["quality_ki_value"])),
                "   improvement ",
                value_part(fmt_percent(improvement, signed=True), f"bold {gain}"),
            ),
            text_line(
                "  PSNR ",
                value_part(fmt(s["psnr_lr_db"], ".2f")),
                " → ",
                value_part(fmt(s["psnr_ki_db"], ".2f", " dB")),
                " (",
                value_part(fmt(s["psnr_gain_db"], "+.2f"), ""),
                ")   SSIM ",
                value_part(fmt(s["ssim_lr"], ".4f")),
                " → ",
                value_part(fmt(s["ssim_ki"], ".4f")),
            ),
        ]

    def layers(self, width: int, rows: int) -> list[Text]:
        return activity_lines(self.s["layer_activity_map"], self.d.view, width, rows)

    def files(self) -> list[Text]:
        s = self.s
        lines = [
            text_line(
                "panel ",
                value_part(self.d.panel_url(s), "underline"),
                "  stats ",
                value_part(fmt(s["last_statistics_written"], ""), ""),
                "  ckpt ",
                value_part(fmt(s["last_checkpoint"], ""), ""),
            )
        ]
        if s["last_statistics_error"]:
            lines.append(
                text_line(("statistics write failed: " + s["last_statistics_error"], "red"))
            )
        return lines

    def status(self) -> Text:
        queued = self.s["pending_commands"]
        line = text_line("queued ", value_part(", ".join(queued) if queued else "none", "yellow"))
        message = self.d.current_message()
        if message is not None:
            text, style = message
            line.append("   ")
            line.append(text, style=style)
        return line

    def keys(self) -> Text:
        if self.d.keyboard_active:
            return text_line(("keys ", "dim"), (KEYS_LINE, "bold"))
        return text_line(f"keyboard off ({self.d.keyboard_note}) · Ctrl+C stops")

    def help(self) -> list[Text]:
        lines = [text_line(("Keys", "bold underline"), "  (h closes)")]
        lines += [text_line((f"  {key:<7}", "bold"), (text, "")) for key, text in HELP_LINES]
        return [*lines, text_line(HELP_NOTE)]
