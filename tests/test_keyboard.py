"""The keyboard: the real CLI in a pseudo-terminal (keys → commands → files, terminal mode
restored), the same CLI with stdin from /dev/null, and the reader in-process on a pty."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import pty
import re
import signal
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pexpect
import pytest
from helpers import REPO, TINY_SETTINGS, run_cli, wait_until, write_toml

from vsr_async.runtime.hooks import RunHooks
from vsr_async.terminal.keyboard import STOP_PROMPT, KeyboardReader, keys_in

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[@-Z\\-_]")
WAIT_S = 60.0


def cli_config(tmp_path: Path, dataset: Path, **overrides: Any) -> Path:
    values = {
        **TINY_SETTINGS,
        "DATASET_ROOT": str(dataset),
        "DATA_ROOT": str(tmp_path / "Learn"),
        "KEYBOARD_ENABLED": True,
        **overrides,
    }
    return write_toml(tmp_path / "run.toml", values)


class PtySession:
    """The CLI on a 24×80 pseudo-terminal, started by a shell that records `stty -g` of that
    terminal before and after. Every wait drains the pty (a full pty would block the child)."""

    def __init__(self, tmp_path: Path, config: Path) -> None:
        self.run_dir = tmp_path / "Learn"
        self.before, self.after = tmp_path / "stty_before", tmp_path / "stty_after"
        script = f'stty -g > "{self.before}"; "$@"; rc=$?; stty -g > "{self.after}"; exit $rc'
        command = [sys.executable, "-m", "vsr_async", "train", "--config", str(config)]
        env = {**os.environ, "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}
        for name in ("COLUMNS", "LINES", "NO_COLOR"):
            env.pop(name, None)
        self.child = pexpect.spawn(
            "bash",
            ["-c", script, "bash", *command, "--no-web"],
            cwd=str(REPO),
            env=env,
            dimensions=(24, 80),
            encoding="utf-8",
            codec_errors="replace",
        )
        self.raw = ""

    @property
    def text(self) -> str:
        """Everything the terminal showed so far, escape codes removed."""
        return ANSI.sub("", self.raw)

    def log(self) -> str:
        path = self.run_dir / "training.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def pump(self, timeout: float = 0.05) -> None:
        with contextlib.suppress(pexpect.TIMEOUT, pexpect.EOF):  # EOF: `wait` says it exited
            self.raw += self.child.read_nonblocking(1 << 16, timeout=timeout)

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            assert self.child.isalive(), f"CLI exited while waiting for {what}:\n{self.text}"
            self.pump()
        raise AssertionError(f"no {what} within {timeout} s\nlog:\n{self.log()[-3000:]}")

    def logged_steps(self) -> list[int]:
        return [int(m) for m in re.findall(r" step (\d+)/\d+ ", self.log())]

    def wait_for_step_after(self, step: int) -> int:
        return self.wait(
            f"a logged step after {step}",
            lambda: next((s for s in self.logged_steps() if s > step), None),
        )

    def shown_since(self, mark: int, text: str) -> bool:
        return text in self.text[mark:]

    def statistics(self) -> list[dict[str, Any]]:
        found = []
        for path in self.run_dir.glob("Statistik_*.json"):
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
            except FileNotFoundError:  # replaced between glob and read
                continue
        return found

    def finish(self, timeout: float = WAIT_S) -> int:
        deadline = time.monotonic() + timeout
        while self.child.isalive() and time.monotonic() < deadline:
            try:
                self.raw += self.child.read_nonblocking(1 << 16, timeout=0.2)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                break
        self.child.wait()
        return self.child.exitstatus


@pytest.fixture
def session(tmp_path: Path, tiny_dataset: Path):
    started = PtySession(tmp_path, cli_config(tmp_path, tiny_dataset))
    yield started
    if started.child.isalive():
        started.child.terminate(force=True)


def test_keys_in_a_pseudo_terminal_drive_the_run(session: PtySession) -> None:
    s = session
    s.wait("keyboard on", lambda: "keyboard on" in s.log())
    step = s.wait_for_step_after(0)

    # v: a validation whose Statistik file says it came from the keyboard
    s.child.send("v")
    first = s.wait(
        "a keyboard Statistik file",
        lambda: next((d for d in s.statistics() if d["validation_trigger"] == "keyboard"), None),
    )
    assert first["validation_count"] == 1

    # p: paused (the dashboard says so); a validation while paused shows training_paused and
    # the step the pause happened at — the counter did not move
    s.child.send("p")
    paused = s.wait("the pause", lambda: re.search(r"training paused at step (\d+)", s.log()))
    paused_step = int(paused.group(1))
    s.wait("PAUSED on the dashboard", lambda: "PAUSED" in s.text)
    s.child.send("v")
    during = s.wait(
        "a Statistik file written while paused",
        lambda: next((d for d in s.statistics() if d["validation_count"] == 2), None),
    )
    assert during["training_paused"] is True
    assert during["step_current"] == paused_step == during["validation_step"]
    assert max(s.logged_steps()) <= paused_step

    # p again: resumed, steps move on
    s.child.send("p")
    s.wait("the resume", lambda: f"training resumed at step {paused_step}" in s.log())
    step = s.wait_for_step_after(paused_step)

    # c: a checkpoint file (or, in a build without checkpoints, a clear message)
    mark = len(s.text)
    s.child.send("c")
    s.wait(
        "the checkpoint",
        lambda: (
            s.shown_since(mark, "checkpoint saved: checkpoint_")
            or s.shown_since(mark, "not available yet")
        ),
    )
    if "checkpoint saved" in s.text[mark:]:
        assert list((s.run_dir / "checkpoints").glob("checkpoint_*.pt"))

    # q, n: asked, cancelled, training goes on
    mark = len(s.text)
    s.child.send("q")
    s.wait("the stop prompt", lambda: s.shown_since(mark, STOP_PROMPT))
    s.child.send("n")
    s.wait("the cancel message", lambda: s.shown_since(mark, "stop cancelled"))
    step = s.wait_for_step_after(max(s.logged_steps()))

    # q, y: stops with exit code 0, terminal settings as before the start
    mark = len(s.text)
    s.child.send("q")
    s.wait("the stop prompt again", lambda: s.shown_since(mark, STOP_PROMPT))
    s.child.send("y")
    assert s.finish() == 0, s.text[-3000:]
    assert step > 0
    assert "stopping: key q" in s.log()
    assert "Traceback" not in s.text
    assert s.before.read_text().strip() == s.after.read_text().strip()


def test_sigterm_in_a_pseudo_terminal_stops_cleanly_and_restores_the_terminal(
    session: PtySession,
) -> None:
    s = session
    s.wait("keyboard on", lambda: "keyboard on" in s.log())
    s.wait_for_step_after(0)
    shell = s.child.pid
    python = int(Path(f"/proc/{shell}/task/{shell}/children").read_text().split()[0])
    os.kill(python, signal.SIGTERM)
    assert s.finish() == 0, s.text[-3000:]
    assert "SIGTERM received" in s.log()
    assert s.before.read_text().strip() == s.after.read_text().strip()


def test_stdin_from_dev_null_trains_validates_and_writes_statistics(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    config = cli_config(tmp_path, tiny_dataset, MAX_STEPS=10, VAL_STEP_EVERY=5)
    result = run_cli("train", "--config", str(config), "--no-web", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    run_dir = tmp_path / "Learn"
    for step in (5, 10):
        snapshot = json.loads((run_dir / f"Statistik_{step}.json").read_text(encoding="utf-8"))
        assert snapshot["validation_trigger"] == "schedule"
        assert snapshot["quality_ki_value"] is not None
    assert output.count("keyboard off: stdin is not a terminal") == 1
    # without a terminal: one plain line per LOG_TBOARD_EVERY steps and one per validation
    assert [int(s) for s in re.findall(r" step (\d+)/10 ", output)] == [5, 10]
    assert len(re.findall(r"validation at step \d+ \(schedule\)", output)) == 2
    assert "\x1b[" not in result.stdout  # no dashboard drawn into a pipe
    assert "traceback" not in output.lower() and "error" not in output.lower(), output


def test_keys_in_in_read_drop_escape_sequences() -> None:
    assert keys_in("v") == ["v"]
    assert keys_in("pq") == ["p", "q"]
    assert keys_in("\x1b[A") == []  # arrow up
    assert keys_in("\x1b[1;5Cv") == ["v"]  # Ctrl+arrow, then v
    assert keys_in("\x1bOP") == []  # F1
    assert keys_in("\x1bv") == []  # Alt+v


async def test_reader_on_a_pty_queues_keys_at_once_and_restores_the_mode(
    start_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await start_run(KEYBOARD_ENABLED=True)
    store, supervisor = run.store, run.supervisor
    hooks = RunHooks()  # what a second Ctrl+C runs before exiting, as the supervisor's
    master, slave = pty.openpty()
    stdin = open(slave, encoding="utf-8", closefd=False)  # noqa: SIM115 (closed below)
    reader = KeyboardReader(supervisor, stdin=stdin)
    again = KeyboardReader(supervisor, stdin=stdin)
    hooks.add(again)
    try:
        before = termios.tcgetattr(slave)
        await reader.start()
        assert reader.active
        mode = termios.tcgetattr(slave)
        assert not mode[3] & (termios.ICANON | termios.ECHO)
        assert mode[3] & termios.ISIG  # Ctrl+C still interrupts

        await wait_until(lambda: store.progress.step >= 2, store)
        pressed = time.monotonic()
        os.write(master, b"p")
        await wait_until(
            lambda: "TogglePause" in store.pending_commands or store.training_paused, store
        )
        assert time.monotonic() - pressed < 0.1  # queued at once, run at the step boundary
        await wait_until(lambda: store.training_paused, store, timeout=30)
        paused_at = store.progress.step

        os.write(master, b"q")
        os.write(master, b"x")  # anything but y cancels
        os.write(master, b"p")
        await wait_until(lambda: not store.training_paused, store, timeout=30)
        await wait_until(lambda: store.progress.step > paused_at, store, timeout=30)
        assert supervisor.stop_reason is None

        await reader.stop()  # the orderly path
        assert termios.tcgetattr(slave) == before
        assert not reader.active

        await again.start()  # the second-Ctrl+C path: the supervisor runs the hooks, exits
        assert termios.tcgetattr(slave) != before
        hooks.hard_exit()
        assert termios.tcgetattr(slave) == before
    finally:
        reader.close()
        await again.stop()
        stdin.close()
        os.close(master)
        os.close(slave)


async def test_without_a_terminal_or_with_no_keyboard_the_reader_stays_off(
    make_config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vsr_async.terminal.keyboard")
    keyboard_on = SimpleNamespace(config=make_config(KEYBOARD_ENABLED=True))
    piped = KeyboardReader(keyboard_on, stdin=io.StringIO(""))
    await piped.start()
    assert not piped.active
    master, slave = pty.openpty()
    with open(slave, encoding="utf-8", closefd=False) as tty:
        keyboard_off = SimpleNamespace(config=make_config(KEYBOARD_ENABLED=False))
        off = KeyboardReader(keyboard_off, stdin=tty)
        before = termios.tcgetattr(slave)
        await off.start()
        assert not off.active
        assert termios.tcgetattr(slave) == before
    os.close(master)
    os.close(slave)
    await asyncio.gather(piped.stop(), off.stop())
    messages = [r.getMessage() for r in caplog.records if r.name == "vsr_async.terminal.keyboard"]
    assert messages == [
        "keyboard off: stdin is not a terminal",
        "keyboard off: --no-keyboard (KEYBOARD_ENABLED = false)",
    ]
