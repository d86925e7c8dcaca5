"""Shared fixtures: a tiny real-photo dataset (built once per session) and real runs of the
supervisor on the CPU, each in its own `tmp_path`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import torch
from helpers import TINY_SETTINGS, write_patch_dataset

from vsr_async.runtime.launch import Run, build_run, scan_async
from vsr_async.settings import Config, build_config

# One intra-op thread in this process and (through the environment) in every child process: on a
# busy 2-core machine two OpenMP threads spin against each other and a tiny step takes ~40x
# longer. It also keeps runs that are compared with each other on the same thread count.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_patch_dataset(tmp_path_factory.mktemp("tiny_dataset"))


@pytest.fixture
def make_config(tmp_path: Path, tiny_dataset: Path) -> Callable[..., Config]:
    """`make_config(**overrides)`: the tiny CPU config with DATA_ROOT in this test's tmp_path."""

    def make(**overrides: Any) -> Config:
        values = {
            **TINY_SETTINGS,
            "DATASET_ROOT": str(tiny_dataset),
            "DATA_ROOT": str(tmp_path / "Learn"),
            **overrides,
        }
        return build_config(values)

    return make


@pytest.fixture
async def start_run(
    make_config: Callable[..., Config],
) -> AsyncIterator[Callable[..., Awaitable[Run]]]:
    """`run = await start_run(**overrides)`: a real run training in the background.

    Returns once the supervisor has started (engine built, first step pending). At teardown the
    run is stopped and awaited, so every test leaves no thread or file handle behind.
    """
    started: list[tuple[Run, asyncio.Task[int]]] = []

    async def start(**overrides: Any) -> Run:
        config = make_config(**overrides)
        info = await scan_async(config)
        run = build_run(config, info, console_log=False)
        started.append((run, await run.start()))
        return run

    yield start
    for run, task in started:
        if not task.done():
            run.supervisor.stop("test teardown")
        await asyncio.wait_for(asyncio.shield(task), 120)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def http(live: Any) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for a module's `live` panel run (each web test module defines `live`)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session
