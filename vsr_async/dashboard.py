"""Dashboard: the run in the terminal, drawn with rich from `store.snapshot()` and nothing else.

Redrawn on the event loop (never the training thread) at most `MAX_FRAMES_PER_S` times a second,
driven by the store's change notifications. Only for a terminal stdout; without one the
supervisor's log lines (one per LOG_TBOARD_EVERY steps, one per validation) are the display.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import enum
import logging
import os
import signal
import sys
import time
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.segment import Segment
from rich.text import Text

from vsr_async.terminal import LEAVE_FULL_SCREEN, FrameWriter, is_terminal

log = logging.getLogger(__name__)

MAX_FRAMES_PER_S = 4
IDLE_REDRAW_S = 1.0  # redraw this often even without changes (message expiry, resize fallback)
MESSAGE_TTL_S = 20.0  # key feedback stays this long; the stop prompt stays until answered
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


class DashboardFrame:
    """A rich renderable; sections are dropped (least important first) to fit the height."""

    def __init__(self, dashboard: Dashboard, snapshot: dict[str, Any]) -> None:
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
        columns = (
            ("total", "total_loss_value", None),
            ("L1", "l1_loss_value", "l1_weight_current"),
            ("MS", "ms_loss_value", "ms_weight_current"),
            ("gradient", "gradient_loss_value", "gradient_weight_current"),
            ("perceptual", "perceptual_loss_value", "perceptual_weight_current"),
        )
        names, values, weights = _line("losses  "), _line("  value "), _line("  weight")
        for name, loss_key, weight_key in columns:
            names.append(f"{name:>12}", style="dim")
            values.append_text(_line(_value(f"{fmt_loss(s[loss_key]):>12}")))
            weight = "" if weight_key is None else fmt(s[weight_key], ".3g")
            weight = weight if weight in ("", MISSING) else f"×{weight}"
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
        activity: dict[str, float] = self.s["layer_activity_map"]
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
        activity: dict[str, float], view: ActivityView, ncols: int
    ) -> list[list[tuple[str, float]]]:
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


# --- the service ------------------------------------------------------------------------------


class Dashboard:
    """The supervisor service that owns the terminal's output while the run lasts.

    `start()` takes the screen (rich `Live`, alternate screen, no auto refresh) and silences the
    console log handler if stderr would tear the frame (training.log still gets every line);
    `close()` gives both back and is safe on every exit path (it is also registered with
    `atexit`). The keyboard calls `notify`, `switch_view` and `toggle_help`.
    """

    def __init__(
        self,
        store: Any,
        config: Any,
        *,
        console: Console | None = None,
        run_logging: Any = None,
        screen: bool = True,
    ) -> None:
        self.store = store
        self.config = config
        self.console = console
        self.run_logging = run_logging
        self.screen = screen
        self.view = ActivityView.BY_DIRECTION
        self.help_visible = False
        self.keyboard_active = False
        self.keyboard_note = "stdin is not a terminal"
        self.frames_drawn = 0
        self._message: tuple[str, str, float, bool] | None = None
        self._live: Live | None = None
        self._writer: FrameWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()
        self._console_was_on: bool | None = None
        self._draw_failed = False
        self._winch = False

    @classmethod
    def for_terminal(cls, supervisor: Any, run_logging: Any = None) -> Dashboard | None:
        """A dashboard when stdout is a (non-dumb) terminal, else None (plain log lines)."""
        if not is_terminal(sys.stdout) or os.environ.get("TERM", "") in ("dumb", "unknown"):
            return None
        dashboard = cls(supervisor.store, supervisor.config, run_logging=run_logging)
        supervisor.on_hard_exit(dashboard.leave_screen_now)
        return dashboard

    # --- keyboard-facing -----------------------------------------------------------------------

    def notify(self, message: str, style: str = "bold", *, prompt: bool = False) -> None:
        """Show key feedback on the status line (a prompt stays until the next message)."""
        self._message = (message, style, time.monotonic(), prompt)
        self._poke()

    def switch_view(self) -> ActivityView:
        views = list(ActivityView)
        self.view = views[(views.index(self.view) + 1) % len(views)]
        self._poke()
        return self.view

    def toggle_help(self) -> bool:
        self.help_visible = not self.help_visible
        self._poke()
        return self.help_visible

    def current_message(self) -> tuple[str, str] | None:
        if self._message is None:
            return None
        text, style, shown_at, prompt = self._message
        if not prompt and time.monotonic() - shown_at > MESSAGE_TTL_S:
            return None
        return text, style

    def panel_url(self, snapshot: dict[str, Any]) -> str:
        runtime = snapshot.get("runtime") or {}
        url = runtime.get("web_url")
        if url:
            return str(url)
        if not self.config.WEB_ENABLED:
            return "off"
        return f"http://{self.config.WEB_HOST}:{self.config.WEB_PORT}"

    # --- drawing -------------------------------------------------------------------------------

    def render(self, snapshot: dict[str, Any]) -> DashboardFrame:
        return DashboardFrame(self, snapshot)

    def draw(self) -> None:
        """One frame from a fresh snapshot (event loop only)."""
        if self._live is None:
            return
        try:
            self._live.update(self.render(self.store.snapshot()), refresh=True)
            self.frames_drawn += 1
        except Exception:  # a drawing bug must never stop training; report it once
            if not self._draw_failed:
                self._draw_failed = True
                log.exception("dashboard: drawing failed")

    def _poke(self) -> None:
        self._poked.set()

    async def _next_change(self, version: int) -> int:
        """Until the store changes, a local change (key, resize), or IDLE_REDRAW_S passes."""
        waiters = [
            asyncio.ensure_future(self.store.wait_for_change(version, IDLE_REDRAW_S)),
            asyncio.ensure_future(self._poked.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        self._poked.clear()
        return self.store.version

    async def _draw_loop(self) -> None:
        version = -1
        while True:
            version = await self._next_change(version)
            while self._writer is not None and self._writer.busy:  # the terminal is behind:
                await asyncio.sleep(1 / MAX_FRAMES_PER_S)  # skip frames, never queue them
            self.draw()
            await asyncio.sleep(1 / MAX_FRAMES_PER_S)  # at most 4 frames a second

    # --- service -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.console is None:
            self._writer = FrameWriter(sys.stdout)
            self.console = Console(file=self._writer, force_terminal=True)  # size: per frame
        if self.run_logging is not None and is_terminal(sys.stderr):
            handler = self.run_logging.console_handler
            self._console_was_on = handler.level <= logging.INFO
            self.run_logging.set_console(False)
        self._live = Live(
            console=self.console,
            screen=self.screen,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="crop",
        )
        self._live.start()
        atexit.register(self.close)
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGWINCH, self._poke)
            self._winch = True
        self.draw()
        self._task = asyncio.create_task(self._draw_loop(), name="dashboard")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.close()

    def close(self) -> None:
        """Give the terminal back (idempotent; sync, so it also runs from `atexit`)."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(RuntimeError):  # from atexit, the loop may be closed
                task.cancel()
        if self._winch:
            self._winch = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGWINCH)
        live, self._live = self._live, None
        if live is None:
            return
        atexit.unregister(self.close)
        with contextlib.suppress(Exception):
            live.update(self.render(self.store.snapshot()))
            live.stop()
        if self._writer is not None:
            self._writer.close()
        if self._console_was_on is not None and self.run_logging is not None:
            self.run_logging.set_console(self._console_was_on)
        if self._writer is not None:
            with contextlib.suppress(OSError):  # the terminal may be gone (hang-up)
                print(self.summary(self.store.snapshot()), file=sys.stdout, flush=True)

    def summary(self, s: dict[str, Any]) -> str:
        """One line left on the normal screen when the dashboard closes."""
        parts = [f"vsr_async: step {fmt_steps(s['step_current'])}/{fmt_steps(s['step_max'])}"]
        if s["validation_step"] is not None:
            parts.append(
                f"last validation at step {fmt_steps(s['validation_step'])}: output "
                f"{fmt_percent(s['quality_ki_value'])}, improvement "
                f"{fmt_percent(s['quality_improvement_value'], signed=True)}"
            )
        if s["last_statistics_written"]:
            parts.append(f"statistics {s['last_statistics_written']}")
        return " · ".join(parts)

    def leave_screen_now(self) -> None:
        """Hard-exit hook (second Ctrl+C): no locks, no thread, just the escape codes."""
        if self._live is not None and self.screen:
            with contextlib.suppress(OSError):
                os.write(sys.stdout.fileno(), LEAVE_FULL_SCREEN)
