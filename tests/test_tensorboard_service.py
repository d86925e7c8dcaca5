"""`--tensorboard [PORT]`: TensorBoard served from the training process beside the panel, read
over real HTTP; the snapshot and the panel point at it; a busy port is one line; it stops with
the run and frees its port."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from helpers import TINY_SETTINGS, CliRun, cli_config, run_cli, write_toml
from web_helpers import BROWSER_ARGS, LiveRun, web_config

import web.tensorboard_service as service_module
from vsr_async.errors import ConfigError
from vsr_async.runtime.launch import build_run, scan_async
from web.server import WebPanel
from web.tensorboard_service import TensorBoardService, check_tensorboard_port

CHROMIUM = Path(os.environ.get("VSR_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with a listening socket on 127.0.0.1."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def get_json(http: aiohttp.ClientSession, url: str) -> object:
    async with http.get(url) as response:
        assert response.status == 200, url
        return await response.json()


async def test_tensorboard_serves_the_runs_events_beside_the_panel(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "RELOAD_INTERVAL_S", 0.5)  # the test need not wait 5 s
    config = web_config(
        tiny_dataset, tmp_path / "Learn", TENSORBOARD_ENABLED=True, TENSORBOARD_PORT=0
    )
    run = build_run(config, await scan_async(config), console_log=False)
    panel = WebPanel(run.supervisor, config, run.logging)
    board = TensorBoardService.for_run(run.store, run.run_dir, run.config)
    run.supervisor.add_hook(panel)
    run.supervisor.add_hook(board)
    task = await run.start()
    live = LiveRun(run, panel, task)
    try:
        port = board.port
        assert isinstance(port, int) and port > 0
        await live.steps_advance(2)
        async with aiohttp.ClientSession() as http:
            snapshot = await get_json(http, live.url("/api/snapshot"))
            assert isinstance(snapshot, dict) and snapshot["tensorboard_port"] == port
            async with http.get(live.url("/")) as response:
                assert 'id="tensorboard-link"' in await response.text()
            async with http.get(live.url("/static/app.js")) as response:
                assert "snap.tensorboard_port" in await response.text()

            tensorboard = f"http://127.0.0.1:{port}"
            async with http.get(tensorboard + "/") as response:
                assert response.status == 200
                assert "<title>TensorBoard</title>" in await response.text()

            async def scalar_tags() -> set[str]:  # the run's events, as TensorBoard reads them
                wanted = {"Loss/Total", "Training/LearningRate"}
                while True:  # a reload may come between two scalars of one logging step
                    tags = await get_json(http, tensorboard + "/data/plugin/scalars/tags")
                    assert isinstance(tags, dict)
                    if wanted <= set(tags.get(".", {})):
                        return set(tags["."])
                    await asyncio.sleep(0.2)

            assert "Loss/L1" in await asyncio.wait_for(scalar_tags(), 30)
        await check_panel_link(live, port)
    finally:
        if not task.done():
            run.supervisor.stop("test finished")
        await asyncio.wait_for(asyncio.shield(task), 120)
    assert refused(port), "the port is free once the run has stopped"
    assert run.store.tensorboard_port is None
    assert board._reloader is not None and not board._reloader.is_alive()


async def check_panel_link(live: LiveRun, port: int) -> None:
    """In Chromium (where installed; test_web_browser.py says when it is not): the panel, opened
    at the predecessor's /monitoring path, shows a link to this TensorBoard."""
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        return
    if not CHROMIUM.is_file():
        return
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(live.url("/monitoring"))
            link = page.locator("#tensorboard-link")
            await expect(link).to_be_visible(timeout=30_000)
            await expect(link).to_have_attribute("href", f"http://127.0.0.1:{port}/")
        finally:
            await browser.close()


async def test_a_busy_port_is_one_line(busy_port: int, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        check_tensorboard_port("127.0.0.1", busy_port)
    message = str(error.value)
    assert message == (
        f"config key TENSORBOARD_PORT: cannot start TensorBoard on 127.0.0.1:{busy_port}: "
        "address already in use (pick another port with --tensorboard PORT)"
    )
    # the same when the port is taken between the check and the start
    from vsr_async.runtime.store import StatsStore

    board = TensorBoardService(StatsStore(run_id="x", step_max=1), tmp_path, "127.0.0.1", busy_port)
    with pytest.raises(ConfigError, match="address already in use"):
        await board.start()


def test_cli_stops_on_a_busy_tensorboard_port_before_writing(
    busy_port: int, tiny_dataset: Path, tmp_path: Path
) -> None:
    learn = tmp_path / "Learn"
    config = write_toml(
        tmp_path / "run.toml",
        {**TINY_SETTINGS, "DATASET_ROOT": str(tiny_dataset), "DATA_ROOT": str(learn)},
    )
    result = run_cli("train", "--config", str(config), "--tensorboard", str(busy_port), "--no-web")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"vsr_async: error: config key TENSORBOARD_PORT: cannot start TensorBoard on "
        f"127.0.0.1:{busy_port}: address already in use (pick another port with "
        "--tensorboard PORT)"
    )
    assert not learn.exists()


async def test_cli_tensorboard_option_serves_and_stops(tiny_dataset: Path, tmp_path: Path) -> None:
    config = cli_config(tmp_path / "run.toml", tiny_dataset, tmp_path / "Learn")
    cli = await CliRun.start(config, "--tensorboard", "0")  # --no-web: it needs no panel
    try:
        url = (await cli.wait_for(re.compile(r"tensorboard: (http://127\.0\.0\.1:\d+/)"))).group(1)
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200
        cli.send(signal.SIGTERM)
        assert await cli.finish() == 0
        assert "tensorboard stopped" in cli.output
        assert refused(int(url.rsplit(":", 1)[1].strip("/")))
    finally:
        await cli.close()
