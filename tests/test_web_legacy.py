"""The predecessor's panel paths (`/monitoring`, `/monitoring/data`, `/monitoring/config`,
`/config`, `POST /monitoring/command`) against a real tiny CPU run over real HTTP: the page, the
snapshot, each action carried out by the run, its refusals, and the same access rules as every
other route."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from web_helpers import LiveRun, running_panel, web_config

from vsr_async.runtime.snapshot import SNAPSHOT_KEYS

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "legacy-paths-token"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live(
    tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveRun]:
    run_dir = tmp_path_factory.mktemp("web_legacy") / "Learn"
    async with running_panel(web_config(tiny_dataset, run_dir)) as running:
        await running.steps_advance(2)
        yield running


async def command(http: aiohttp.ClientSession, live: LiveRun, body: object) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(live.url("/monitoring/command"), data=data) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def test_page_and_snapshot_at_the_old_paths(live, http) -> None:
    async with http.get(live.url("/")) as response:
        page = await response.read()
    for path in ("/monitoring", "/monitoring/"):
        async with http.get(live.url(path)) as response:
            assert response.status == 200 and response.content_type == "text/html", path
            assert await response.read() == page, path

    async with http.get(live.url("/monitoring/data")) as response:
        assert response.status == 200 and response.content_type == "application/json"
        assert response.headers["Cache-Control"] == "no-cache"
        text = await response.text()
    snapshot = json.loads(text)
    assert list(snapshot) == list(SNAPSHOT_KEYS)
    assert text.startswith('{\n  "')  # indented, as the predecessor's and the Statistik files
    assert snapshot["step_current"] >= 2 and snapshot["run_id"] == live.store.run_id


async def test_trigger_validation_runs_one_and_writes_its_file(live, http) -> None:
    count = live.store.validation.count
    status, reply = await command(http, live, {"action": "trigger_validation"})
    assert status == 200
    assert reply["success"] is True and reply["message"] == "Validation queued"
    request = live.supervisor.request(reply["request_id"])
    await asyncio.wait_for(request.result, 60)
    assert live.store.validation.count == count + 1
    assert live.store.validation.trigger == "web"
    step = live.store.validation.step
    assert (live.run.run_dir / f"Statistik_{step}.json").is_file()


async def test_toggle_pause_pauses_and_resumes(live, http) -> None:
    status, reply = await command(http, live, {"action": "toggle_pause"})
    assert (status, reply["success"], reply["paused"]) == (200, True, True)
    await live.wait_until(lambda: live.store.training_paused)
    step = live.store.progress.step
    status, reply = await command(http, live, {"action": "toggle_pause"})
    assert (status, reply["paused"]) == (200, False)
    await live.wait_until(lambda: not live.store.training_paused)
    assert await live.steps_advance(2) >= step + 2


async def test_save_checkpoint_writes_one(live, http) -> None:
    before = live.store.last_checkpoint
    status, reply = await command(http, live, {"action": "save_checkpoint"})
    assert status == 200 and reply == {"success": True, "message": "Checkpoint save queued"}
    await live.wait_until(lambda: live.store.last_checkpoint not in (None, before))
    assert (live.run.run_dir / "checkpoints" / str(live.store.last_checkpoint)).is_file()


async def test_change_refresh_is_clamped_and_read_back(live, http) -> None:
    for sent, kept in ((120, 60), (0, 1), (7.5, 7.5)):
        status, reply = await command(http, live, {"action": "change_refresh", "interval": sent})
        assert (status, reply) == (200, {"success": True, "interval": kept})
        for path in ("/monitoring/config", "/config"):
            async with http.get(live.url(path)) as response:
                assert response.status == 200
                assert await response.json() == {
                    "refresh_interval_seconds": kept,
                    "auto_refresh_enabled": True,
                }


async def test_refusals_say_success_false_and_training_goes_on(live, http) -> None:
    step = live.store.progress.step
    cases: list[tuple[object, str]] = [
        ({"action": "run_video_test"}, "Unknown action: run_video_test"),
        ({}, "Unknown action: "),
        ([1, 2], "expected a JSON object"),
        (b"{not json", "malformed JSON body"),
        (b"", "expected a JSON object"),
        ({"action": "change_refresh", "interval": "10"}, "interval must be a number"),
        ({"action": "change_refresh", "interval": True}, "interval must be a number"),
    ]
    for body, message in cases:
        status, reply = await command(http, live, body)
        assert status == 400, body
        assert reply["success"] is False and reply["message"].startswith(message), (body, reply)
        assert reply["error"] == reply["message"]
    assert not live.store.training_paused
    assert await live.steps_advance(2) >= step + 2


async def test_old_paths_follow_the_same_access_rules(tiny_dataset: Path, tmp_path: Path) -> None:
    config = web_config(tiny_dataset, tmp_path / "Learn", WEB_TOKEN=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    pause = json.dumps({"action": "toggle_pause"})
    async with running_panel(config) as live, aiohttp.ClientSession() as http:
        for path in ("/monitoring", "/monitoring/data", "/monitoring/config", "/config"):
            async with http.get(live.url(path)) as response:
                assert response.status == 401, path
            async with http.get(live.url(path), headers=bearer) as response:
                assert response.status == 200, path
        url = live.url("/monitoring/command")
        async with http.post(url, data=pause) as response:
            assert response.status == 401
        async with http.post(live.url(f"/monitoring/command?token={TOKEN}"), data=pause) as r:
            assert r.status == 401, "writes need the header, not the query parameter"
        evil = {**bearer, "Origin": "http://evil.example"}
        async with http.post(url, data=pause, headers=evil) as response:
            assert response.status == 403
        async with http.post(url, data=pause, headers={**bearer, "Host": "evil.example"}) as r:
            assert r.status == 421
        async with http.post(url, data=b"x" * (64 * 1024 + 1), headers=bearer) as response:
            assert response.status == 413
        assert not live.store.training_paused and not live.store.pending_commands
        async with http.post(url, data=pause, headers=bearer) as response:
            assert response.status == 200 and (await response.json())["paused"] is True
        await live.wait_until(lambda: live.store.training_paused)
