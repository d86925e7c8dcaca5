"""Shared pieces of the web tests: a real tiny CPU run with its WebPanel on 127.0.0.1:<free port>,
an SSE reader, and waits on the store (no sleep-and-hope).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from helpers import TINY_SETTINGS

from vsr_async.runtime.launch import Run, build_run, scan_async
from vsr_async.runtime.store import StatsStore
from vsr_async.settings import Config, build_config
from web.server import WebPanel

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def web_config(dataset: Path, run_dir: Path, **overrides: Any) -> Config:
    """The shared tiny CPU settings with the panel on a free loopback port."""
    values: dict[str, Any] = {
        **TINY_SETTINGS,
        "DATASET_ROOT": str(dataset),
        "DATA_ROOT": str(run_dir),
        "LOG_TBOARD_EVERY": 2,
        "WEB_ENABLED": True,
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": 0,
    }
    values.update(overrides)
    return build_config(values)


@dataclass
class LiveRun:
    run: Run
    panel: WebPanel
    task: asyncio.Task[int]

    @property
    def supervisor(self) -> Any:
        return self.run.supervisor

    @property
    def store(self) -> StatsStore:
        return self.run.store

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.panel.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> int:
        """Await store changes until `predicate()` holds; returns the step at that moment."""
        store = self.store

        async def waiting() -> None:
            version = -1
            while not predicate():
                version = await store.wait_for_change(version, timeout=1.0)

        await asyncio.wait_for(waiting(), timeout)
        return store.progress.step

    async def steps_advance(self, by: int = 2, timeout: float = 60.0) -> int:
        start = self.store.progress.step
        return await self.wait_until(lambda: self.store.progress.step >= start + by, timeout)


@contextlib.asynccontextmanager
async def running_panel(config: Config) -> AsyncIterator[LiveRun]:
    """A real run with its WebPanel as a supervisor service (as the CLI wires it)."""
    info = await scan_async(config)
    run = build_run(config, info, console_log=False)
    panel = WebPanel(run.supervisor, config, run.logging)
    run.supervisor.add_hook(panel)
    task = await run.start()
    try:
        yield LiveRun(run, panel, task)
    finally:
        if not task.done():
            run.supervisor.stop("test finished")
        await asyncio.wait_for(asyncio.shield(task), 120)


@dataclass(frozen=True)
class SseEvent:
    name: str
    data: Any


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """Parse a text/event-stream body into events (comments and `retry:` lines skipped)."""
    name, data = "message", []
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(name, json.loads("\n".join(data)))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


async def next_event(events: AsyncIterator[SseEvent], name: str, timeout: float = 30.0) -> Any:
    """The data of the next event called `name` (others are skipped)."""

    async def find() -> Any:
        async for event in events:
            if event.name == name:
                return event.data
        raise AssertionError(f"stream ended before a {name!r} event")

    return await asyncio.wait_for(find(), timeout)
