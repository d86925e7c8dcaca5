"""The panel's life with the run: `POST /stop` ends the run cleanly and tells open tabs, and a
port that is taken stops the CLI with one clear line and exit code 1.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest
from helpers import TINY_SETTINGS, run_cli, write_toml
from web_helpers import next_event, read_events, running_panel, web_config


async def test_stop_from_the_panel_ends_the_run_and_tells_open_tabs(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    config = web_config(tiny_dataset, tmp_path / "Learn")
    async with running_panel(config) as live, aiohttp.ClientSession() as http:
        await live.steps_advance(1)
        async with http.get(live.url("/api/events")) as stream:
            events = read_events(stream)
            await next_event(events, "snapshot")
            async with http.post(live.url("/stop"), headers={"Origin": live.base_url}) as response:
                assert response.status == 202
                assert await response.json() == {"command": "stop", "status": "queued"}
            stopped = await next_event(events, "stopped", timeout=60)
            assert "stop requested in the web panel" in stopped["reason"]
        assert await asyncio.wait_for(live.task, 60) == 0
        assert live.store.snapshot()["training_stopped"] is True
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(live.url("/api/snapshot")):
                pass


def test_cli_exits_1_with_one_line_when_the_port_is_taken(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    config = write_toml(
        tmp_path / "run.toml",
        {
            **TINY_SETTINGS,
            "DATASET_ROOT": str(tiny_dataset),
            "DATA_ROOT": str(tmp_path / "Learn"),
            "WEB_ENABLED": True,
        },
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("train", "--config", str(config), "--port", str(port), "--no-keyboard")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("vsr_async: error")]
    assert errors == [
        f"vsr_async: error: cannot start the web panel on 127.0.0.1:{port}: address already in "
        "use (pick another port with --port N, or --no-web)"
    ]
    assert "Traceback" not in result.stderr
