"""A connection flood cannot take the training's file descriptors (issue 10, item 1), and a
process out of descriptors is never blamed on the dataset.

The flood test runs the real CLI in a child process with RLIMIT_NOFILE lowered to FD_LIMIT, then
keeps FLOOD_SLOTS connections (more than FD_LIMIT) coming at it, half of them idle and half
stuck in the middle of a request head, for at least FLOOD_MIN_S and until a checkpoint has been
written during the flood. Without the limits of web/limits.py the child runs out of descriptors
at once and dies blaming the dataset.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from helpers import LOG_STEP, REPO, TINY_SETTINGS, write_toml

from vsr_async.data import skipping
from vsr_async.data.loader import _error_from_worker
from vsr_async.errors import ProcessResourceError
from web.limits import os_error_name

FD_LIMIT = 256  # the child's RLIMIT_NOFILE: the panel may hold a quarter (64 connections)
HEADER_TIMEOUT_S = 1.5  # WEB_IDLE_TIMEOUT_S for the test (default 10 s)
FLOOD_SLOTS = 600  # connections kept coming at once, each reopened when the server closes it
FLOOD_MIN_S = 4.0
FLOOD_MAX_S = 60.0  # a flood that sees no checkpoint in this time fails the test
CLOSE_BOUND_S = HEADER_TIMEOUT_S + 5.0  # every connection must be closed by the server by then
PANEL_LINE = re.compile(r"web panel: http://127\.0\.0\.1:(\d+)/")
CHECKPOINT_LINE = re.compile(r"checkpoint saved: (checkpoint_(\d+)\.pt)")
SLOW_HEAD = b"GET /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "  # never finished


@dataclass
class ChildLog:
    """The child's log lines with the monotonic time each arrived."""

    lines: list[tuple[float, str]] = field(default_factory=list)

    def matches(self, pattern: re.Pattern[str], since: float = 0.0, until: float = 1e18):
        return [m for t, line in self.lines if since <= t <= until and (m := pattern.search(line))]

    @property
    def text(self) -> str:
        return "".join(line for _, line in self.lines)


async def read_log(stream: asyncio.StreamReader, log: ChildLog) -> None:
    while line := await stream.readline():
        log.lines.append((time.monotonic(), line.decode("utf-8", "replace")))


@dataclass
class FloodStats:
    opened: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # refused_503, eof, reset
    held_close_s: list[float] = field(default_factory=list)  # connect → EOF, not refused


async def flood_slot(port: int, slow: bool, stats: FloodStats, running: asyncio.Event) -> None:
    """Open a connection, idle or with half a request head, and wait for the server to close
    it; again while `running` is set. A connection left open past CLOSE_BOUND_S fails."""
    while running.is_set():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stats.opened += 1
        opened = time.monotonic()
        if slow:
            writer.write(SLOW_HEAD)
        try:
            data = await asyncio.wait_for(reader.read(), CLOSE_BOUND_S)
            outcome = "refused_503" if data.startswith(b"HTTP/1.1 503") else "eof"
        except ConnectionResetError:  # closed with our half head unread: the kernel sends RST
            outcome = "reset"
        except TimeoutError:
            outcome = await never_accepted(reader, writer)
        finally:
            writer.close()
        stats.outcomes[outcome] += 1
        if outcome == "eof":
            assert data == b"", data[:200]
            stats.held_close_s.append(time.monotonic() - opened)
        await asyncio.sleep(0.05)  # the next connection of this slot


async def never_accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """A connection open past CLOSE_BOUND_S fails the test, unless the server's kernel never
    had it: when the listen queue overflows, Linux drops the handshake's last ACK, so the
    client believes it is connected while the server has no socket (and no descriptor) for
    it. A byte sent on such a connection is answered with a reset."""
    writer.write(b"G")
    try:
        data = await asyncio.wait_for(reader.read(), 2.0)
    except ConnectionResetError:
        return "never_accepted"
    except TimeoutError:
        data = None
    raise AssertionError(f"a connection still open after {CLOSE_BOUND_S} s (then read {data!r})")


async def get_status(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


def lower_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


async def test_connection_flood_does_not_stop_training_or_checkpoints(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    data_root = tmp_path / "Learn"
    config = write_toml(
        tmp_path / "run.toml",
        {
            **TINY_SETTINGS,
            "DATASET_ROOT": str(tiny_dataset),
            "DATA_ROOT": str(data_root),
            "WEB_ENABLED": True,
            "WEB_IDLE_TIMEOUT_S": HEADER_TIMEOUT_S,
            "SAVE_STEP_EVERY": 25,
        },
    )
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "vsr_async", "train", "--config", str(config)],
        *["--port", "0", "--no-keyboard"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lower_descriptor_limit,
    )
    log = ChildLog()
    assert proc.stdout is not None
    reading = asyncio.create_task(read_log(proc.stdout, log))
    try:
        await flood_and_recover(proc, log)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, log.text[-3000:]
        await reading
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reading.cancel()
    text = log.text
    assert "Too many open files" not in text and "Traceback" not in text, text[-3000:]
    assert "could not be read" not in text
    summaries = [line for line in text.splitlines() if "connection(s) refused at the limit" in line]
    assert 1 <= len(summaries) <= 3, summaries  # a summary, not a line per connection
    final = CHECKPOINT_LINE.findall(text)[-1][0]
    assert (data_root / "checkpoints" / final).is_file()


async def flood_and_recover(proc: asyncio.subprocess.Process, log: ChildLog) -> None:
    async def logged(pattern: re.Pattern[str]) -> re.Match[str]:
        while not (found := log.matches(pattern)):
            assert proc.returncode is None, log.text[-3000:]
            await asyncio.sleep(0.1)
        return found[0]

    port = int((await asyncio.wait_for(logged(PANEL_LINE), 120)).group(1))
    base = f"http://127.0.0.1:{port}"
    await asyncio.wait_for(logged(LOG_STEP), 120)
    assert "web panel limits: 64 connections at most, a request head within 1.5 s" in log.text
    async with aiohttp.ClientSession() as http:
        await check_keep_alive_idle_is_closed(port)
        async with http.get(f"{base}/api/events") as events:  # a legitimate stream: kept
            stats = FloodStats()
            running = asyncio.Event()
            running.set()
            started = time.monotonic()
            slots = [
                asyncio.create_task(flood_slot(port, i % 2 == 1, stats, running))
                for i in range(FLOOD_SLOTS)
            ]
            try:
                flood_end = await flood_until_checkpointed(proc, log, started, running)
                recovered = await time_to_answer(http, f"{base}/api/snapshot", flood_end)
                await asyncio.gather(*slots)  # each asserts that the server closed its connection
            finally:
                for slot in slots:
                    slot.cancel()
                await asyncio.gather(*slots, return_exceptions=True)
            chunk = await asyncio.wait_for(events.content.readany(), 10)
            assert chunk, "the event stream opened before the flood was closed"
        steps = [int(m.group(1)) for m in log.matches(LOG_STEP, started, flood_end)]
        checkpoints = log.matches(CHECKPOINT_LINE, started, flood_end)
        print(
            f"flood: {stats.opened} connections ({FLOOD_SLOTS} at once, half with a half request "
            f"head) in {flood_end - started:.1f} s against RLIMIT_NOFILE={FD_LIMIT}; outcomes "
            f"{dict(stats.outcomes)}; held ones closed after "
            f"{min(stats.held_close_s):.2f}-{max(stats.held_close_s):.2f} s; training went "
            f"from step {steps[0]} to {steps[-1]} during it, {len(checkpoints)} checkpoint(s) "
            f"({checkpoints[0].group(1)} .. {checkpoints[-1].group(1)}); /api/snapshot 200 again "
            f"{recovered:.2f} s after the flood stopped"
        )
        assert stats.opened > 2 * FD_LIMIT
        assert stats.outcomes["refused_503"] > 0 and stats.held_close_s  # the cap and the timeout
        assert steps[-1] > steps[0] and checkpoints
        async with http.get(f"{base}/api/snapshot") as response:
            assert response.status == 200
            assert (await response.json())["training_active"] is True
        async with http.post(f"{base}/stop") as response:
            assert response.status == 202


async def flood_until_checkpointed(
    proc: asyncio.subprocess.Process, log: ChildLog, started: float, running: asyncio.Event
) -> float:
    """Let the flood go on for FLOOD_MIN_S and until a checkpoint was saved during it; then
    stop opening connections (the ones open wait for the server). Returns when it stopped."""
    while time.monotonic() - started < FLOOD_MIN_S or not log.matches(
        CHECKPOINT_LINE, since=started + 1.0
    ):
        assert time.monotonic() - started < FLOOD_MAX_S, "no checkpoint during the flood"
        assert proc.returncode is None, log.text[-3000:]
        await asyncio.sleep(0.2)
    running.clear()
    return time.monotonic()


async def time_to_answer(http: aiohttp.ClientSession, url: str, since: float) -> float:
    """Seconds from `since` until `url` answers 200 (bounded by CLOSE_BOUND_S + 5)."""
    while await get_status(http, url) != 200:
        assert time.monotonic() - since < CLOSE_BOUND_S + 5, "the panel did not recover"
        await asyncio.sleep(0.1)
    return time.monotonic() - since


async def check_keep_alive_idle_is_closed(port: int) -> None:
    """One request answered, then silence: the server closes the connection after the timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE).group(1))
        json.loads(await reader.readexactly(length))
        assert await asyncio.wait_for(reader.read(), CLOSE_BOUND_S) == b""
    finally:
        writer.close()


# --- a process out of descriptors is not a broken file -------------------------------------


def test_out_of_descriptors_is_waited_out_not_counted_as_a_broken_file(
    tiny_dataset: Path,
) -> None:
    """In a child (the limit and the descriptor hogs must not touch pytest): a sample read while
    the process has no descriptor left is read again once they are back, giving the same
    tensors, with nothing skipped or remembered as broken; if they never come back the error
    says what happened and does not blame the dataset."""
    script = f"""
import errno, os, resource, sys, threading
sys.path.insert(0, {str(REPO / "tests")!r})
import torch
from helpers import TINY_SETTINGS
from vsr_async.settings import build_config
from vsr_async.data import skipping
from vsr_async.errors import ProcessResourceError
from vsr_async.runtime.launch import scan
from vsr_async.data.loader import build_datasets

config = build_config({{**TINY_SETTINGS, "DATASET_ROOT": {str(tiny_dataset)!r}}})
train, _ = build_datasets(config, scan(config))
expected = train[(3, 1234)]
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

def exhaust():
    hogs = []
    while True:
        try:
            hogs.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
            return hogs

hogs = exhaust()
threading.Timer(0.5, lambda: [os.close(fd) for fd in hogs]).start()
lr, gt, skipped = train[(3, 1234)]
assert torch.equal(lr, expected[0]) and torch.equal(gt, expected[1]), "another sample"
assert skipped == [] and not train._known_bad, (skipped, train._known_bad)

skipping.RESOURCE_WAIT_S = 0.3
hogs = exhaust()
try:
    train[(5, 99)]
except ProcessResourceError as exc:
    print("ERROR:", exc)
else:
    raise AssertionError("read with no descriptor left")
assert not train._known_bad
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.split("ERROR: ", 1)[1].strip()
    assert "this process is out of file descriptors (Too many open files, limit 128)" in message
    assert "the file itself is not at fault" in message
    assert message.startswith("cannot read ") and "in a row" not in message


def test_resource_error_from_a_loader_worker_is_rebuilt_as_one_line() -> None:
    """torch re-raises a worker's error as a RuntimeError holding the traceback text; the user
    reads the original one-line ProcessResourceError."""
    from torch._utils import ExceptionWrapper

    original = ProcessResourceError("/data/GT/0001.png", "out of memory")
    try:
        raise original
    except ProcessResourceError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(RuntimeError) as raised:
        wrapper.reraise()
    rebuilt = _error_from_worker(raised.value)
    assert isinstance(rebuilt, ProcessResourceError)
    assert str(rebuilt) == str(original)
    assert rebuilt.path == Path("/data/GT/0001.png")
    assert skipping.RESOURCE_WAIT_S >= 1.0  # the module default is not the test's


def test_accept_failures_are_named_even_without_an_errno() -> None:
    """The accept loop counts a failure by its text, else its errno's name; an OSError that
    carries no errno at all is counted by its class instead of ending the loop (KeyError)."""
    assert os_error_name(OSError(errno.EMFILE, "Too many open files")) == "Too many open files"
    assert os_error_name(OSError(errno.ENOBUFS, "")) == "ENOBUFS"
    assert os_error_name(ConnectionAbortedError("no errno")) == "ConnectionAbortedError"
