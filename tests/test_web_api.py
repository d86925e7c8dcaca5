"""The REST API and event stream against a real tiny CPU run, over real HTTP on 127.0.0.1.

One run serves the whole module (its loop is module-scoped); tests that need a run of their own
(a token, a stop) start one. Nothing of the runtime is mocked.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from web_helpers import LiveRun, next_event, read_events, running_panel, web_config
from yarl import URL

from vsr_async.errors import PortInUseError
from vsr_async.files.statistics import serialize_snapshot
from web.schemas import SNAPSHOT_SCHEMA
from web.server import WebPanel

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live(
    tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveRun]:
    run_dir = tmp_path_factory.mktemp("web_api") / "Learn"
    async with running_panel(web_config(tiny_dataset, run_dir)) as running:
        await running.steps_advance(2)
        yield running


async def validate_once(live: LiveRun, http: aiohttp.ClientSession) -> dict:
    """POST /validate and wait until its Statistik file is written; returns the request JSON."""
    async with http.post(live.url("/validate")) as response:
        assert response.status == 202
        request_id = (await response.json())["request_id"]
    await asyncio.wait_for(live.supervisor.request(request_id).result, 60)
    async with http.get(live.url(f"/api/requests/{request_id}")) as response:
        assert response.status == 200
        return await response.json()


async def test_read_routes_answer_with_their_content_types(live, http) -> None:
    expected = {
        "/": "text/html",
        "/static/app.js": "text/javascript",
        "/static/charts.js": "text/javascript",
        "/static/style.css": "text/css",
        "/static/vendor/uPlot.iife.min.js": "text/javascript",
        "/static/vendor/uPlot.min.css": "text/css",
        "/api/snapshot": "application/json",
        "/api/history": "application/json",
        "/api/statistics": "application/json",
        "/api/validation/images": "application/json",
        "/api/config": "application/json",
        "/api/openapi.json": "application/json",
        "/metrics": "text/plain",
    }
    for path, content_type in expected.items():
        async with http.get(live.url(path)) as response:
            assert response.status == 200, path
            assert response.content_type == content_type, path
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    async with http.get(live.url("/api/snapshot")) as response:
        snapshot = await response.json()
    schema_keys = set(SNAPSHOT_SCHEMA["properties"])
    assert schema_keys == set(snapshot), "the OpenAPI schema names every snapshot key"
    assert snapshot["step_current"] >= 2
    async with http.get(live.url("/")) as response:
        page = await response.text()
    for name in ("Validate", "Pause", "Save checkpoint", "Stop", "Download JSON"):
        assert f">{name}</button>" in page


TRAVERSALS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "Statistik_1.json/../x",
    "Statistik_1.json%2F..%2F..%2Fx",
    "%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2E%2E",
    "..",
    ".%2e/.%2e/training.log",
    "..%5C..%5Cwindows%5Cwin.ini",
    "training.log",
    "runtime_config.json",
    "Statistik_01.json",
    "Statistik_-1.json",
    "Statistik_1.json%00",
    "Statistik_1.json.tmp",
    ".Statistik_1.json.tmp",
    "%D9%A1",  # an Arabic-Indic digit one: a digit, but not ASCII
    "-1",
    "1e3",
    "007",
    "99999999999999999999999999",
    "x" * 2000,
]


async def call(http: aiohttp.ClientSession, method: str, url: URL, **kwargs) -> tuple[int, dict]:
    async with http.request(method, url, **kwargs) as response:
        assert response.content_type == "application/json", (method, url, response.status)
        return response.status, await response.json()


async def test_client_errors_are_json_4xx_and_training_goes_on(live, http) -> None:
    base = live.base_url
    big = b"x" * (64 * 1024 + 1)

    async def chunked_body() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b" " * 1024

    cases: list[tuple[str, str, dict, int]] = [
        (
            "PATCH",
            "/api/config",
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        ("PATCH", "/api/config", {"data": b"[1, 2]"}, 400),
        ("PATCH", "/api/config", {"data": b""}, 400),
        ("PATCH", "/api/config", {"data": b'{"MAX_LR": NaN}'}, 400),
        ("PATCH", "/api/config", {"data": b"[" * 50_000}, 400),
        ("PATCH", "/api/config", {"data": b"\xff\xfe{"}, 400),
        ("POST", "/validate", {"data": b"{oops"}, 400),
        ("POST", "/pause", {"data": b"not json"}, 400),
        ("DELETE", "/api/snapshot", {}, 405),
        ("GET", "/validate", {}, 405),
        ("PUT", "/api/config", {"json": {}}, 405),
        ("POST", "/api/snapshot", {}, 405),
        ("POST", "/metrics", {}, 405),
        ("GET", "/nope", {}, 404),
        ("GET", "/api/nope", {}, 404),
        ("GET", "/static/../web/server.py", {}, 404),
        ("GET", "/static/vendor", {}, 404),
        ("GET", "/static/index.html%00", {}, 404),
        ("GET", "/api/requests/0123456789abcdef", {}, 404),
        ("GET", "/api/validation/images/999.png", {}, 404),
        ("GET", "/api/validation/images/abc.png", {}, 404),
        ("PATCH", "/api/config", {"data": big}, 413),
        ("POST", "/validate", {"data": big}, 413),
        ("POST", "/pause", {"data": chunked_body()}, 413),
        ("POST", "/pause", {"headers": {"Origin": "http://evil.example"}}, 403),
        ("POST", "/stop", {"headers": {"Origin": "null"}}, 403),
        ("POST", "/stop", {"headers": {"Origin": "http://127.0.0.1.evil.example"}}, 403),
        ("POST", "/pause", {"headers": {"Sec-Fetch-Site": "cross-site"}}, 403),
        (
            "PATCH",
            "/api/config",
            {"json": {"MAX_LR": 0.5}, "headers": {"Origin": "https://evil.example"}},
            403,
        ),
        ("GET", "/api/snapshot", {"headers": {"Host": "evil.example"}}, 421),
        ("GET", "/", {"headers": {"Host": f"rebind.attacker.example:{live.panel.port}"}}, 421),
        ("POST", "/stop", {"headers": {"Host": "evil.example"}}, 421),
    ]
    cases += [("GET", f"/api/statistics/{t}", {}, 404) for t in TRAVERSALS]
    step_before = live.store.progress.step
    for method, path, kwargs, expected in cases:
        if "chunked" in repr(kwargs.get("data")):
            kwargs = {"data": chunked_body()}  # an async generator is single-use
        status, body = await call(http, method, URL(base + path, encoded=True), **kwargs)
        assert status == expected, (method, path, status, body)
        assert isinstance(body["error"], str) and body["error"], (method, path)
    # None of them paused, stopped or reconfigured the run, and it kept training throughout.
    assert not live.store.training_paused and not live.task.done()
    assert live.supervisor.config.MAX_LR == 1e-3
    assert await live.steps_advance(2) > step_before


async def raw_request(port: int, request_line: str) -> tuple[int, dict]:
    """Send a request line exactly as written (no client-side URL normalization)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{request_line}\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    await writer.wait_closed()
    return int(head.split()[1]), json.loads(body)


async def test_raw_request_targets_are_refused(live) -> None:
    cases = {
        "GET /api/statistics/Statistik_1.json/../../../../etc/passwd HTTP/1.1": 404,
        "GET /api/statistics/../../../etc/passwd HTTP/1.1": 404,
        "GET /api/statistics/%2e%2e%2f%2e%2e%2fetc%2fpasswd HTTP/1.1": 404,
        "GET /static/../../../../etc/passwd HTTP/1.1": 404,
        "GET /static/%2e%2e/server.py HTTP/1.1": 404,
        "GET http://evil.example/api/snapshot HTTP/1.1": 421,  # absolute-form names a host too
    }
    for line, expected in cases.items():
        status, body = await raw_request(live.panel.port, line)
        assert status == expected and body["error"], line


async def test_message_names_the_allowed_methods(live, http) -> None:
    status, body = await call(http, "DELETE", URL(live.url("/validate")))
    assert status == 405 and "POST" in body["error"]


async def test_same_origin_writes_pass(live, http) -> None:
    headers = {"Origin": live.base_url, "Sec-Fetch-Site": "same-origin"}
    async with http.post(live.url("/validate"), headers=headers) as response:
        assert response.status == 202
        request_id = (await response.json())["request_id"]
    await asyncio.wait_for(live.supervisor.request(request_id).result, 60)


async def test_statistics_list_and_content_are_the_files_on_disk(live, http) -> None:
    done = await validate_once(live, http)
    name = done["statistics_file"]
    assert done["status"] == "done" and name == f"Statistik_{done['step']}.json"
    async with http.get(live.url("/api/statistics")) as response:
        listing = (await response.json())["files"]
    assert name in [f["name"] for f in listing]
    on_disk = (live.supervisor.run_dir / name).read_bytes()
    for ref in (str(done["step"]), name):
        async with http.get(live.url(f"/api/statistics/{ref}")) as response:
            assert response.status == 200
            assert await response.read() == on_disk


async def test_statistics_never_follows_a_link(live, http) -> None:
    link = live.supervisor.run_dir / "Statistik_999999.json"
    link.symlink_to("/etc/passwd")
    try:
        status, _ = await call(http, "GET", URL(live.url("/api/statistics/999999")))
        assert status == 404
        async with http.get(live.url("/api/statistics")) as response:
            names = [f["name"] for f in (await response.json())["files"]]
        assert link.name not in names
    finally:
        link.unlink()


async def test_download_is_the_statistik_serialization(live, http) -> None:
    done = await validate_once(live, http)
    saved = json.loads((live.supervisor.run_dir / done["statistics_file"]).read_bytes())
    async with http.get(live.url("/api/snapshot/download")) as response:
        assert response.status == 200
        body = await response.read()
        disposition = response.headers["Content-Disposition"]
    downloaded = json.loads(body)
    assert disposition == f'attachment; filename="Statistik_{downloaded["step_current"]}.json"'
    assert set(downloaded) == set(saved)
    assert body == serialize_snapshot(downloaded), "the bytes come from serialize_snapshot"


async def test_burst_of_validate_requests_is_coalesced(live, http) -> None:
    """200 concurrent POST /validate while one is queued: ≤ 2 validations, every id resolves.

    The GPU thread is kept busy by a long job (as a long step would), so the first request is
    still queued while the burst arrives.
    """
    count_before = live.store.validation.count
    gate = threading.Event()
    busy = asyncio.ensure_future(live.supervisor.worker.run_on_engine(lambda _: gate.wait(60)))
    try:
        async with http.post(live.url("/validate")) as response:
            first = await response.json()
        assert response.status == 202 and first["status"] == "queued"

        async def one() -> dict:
            async with http.post(live.url("/validate")) as r:
                assert r.status == 202
                return await r.json()

        burst = await asyncio.gather(*(one() for _ in range(200)))
    finally:
        gate.set()
    await busy
    ids = {first["request_id"]} | {r["request_id"] for r in burst}
    assert all(r["status"] in ("queued", "running") for r in burst)
    assert len(ids) <= 2
    for request_id in ids:
        report = await asyncio.wait_for(live.supervisor.request(request_id).result, 60)
        async with http.get(live.url(f"/api/requests/{request_id}")) as response:
            followed = await response.json()
        assert followed["status"] == "done"
        assert followed["statistics_file"] == report.statistics_file
        written = json.loads((live.supervisor.run_dir / report.statistics_file).read_bytes())
        assert written["validation_trigger"] == "web"
        assert written["validation_step"] == followed["step"] == report.step
    assert live.store.validation.count - count_before <= 2


async def test_event_stream_delivers_snapshots_commands_and_logs_to_several_tabs(
    live, http
) -> None:
    async with (
        http.get(live.url("/api/events")) as tab1,
        http.get(live.url("/api/events")) as tab2,
    ):
        assert tab1.status == tab2.status == 200
        assert tab1.content_type == "text/event-stream"
        events1, events2 = read_events(tab1), read_events(tab2)
        first = await next_event(events1, "snapshot")
        history = await next_event(events1, "history")
        assert history["reset"] is True and {"loss", "quality"} <= set(history)
        await next_event(events2, "snapshot")
        assert (await next_event(events1, "log"))["message"]

        # later snapshots show the run moving, at most 4 per second
        started, count, latest = time.monotonic(), 0, first
        while time.monotonic() - started < 2.0:
            latest = await next_event(events1, "snapshot")
            count += 1
        assert latest["step_current"] > first["step_current"]
        assert count <= 4 * (time.monotonic() - started) + 2

        async with http.post(live.url("/pause")) as response:
            assert response.status == 202
        while (command := await next_event(events2, "command"))["command"] != "pause":
            pass
        assert command == {"command": "pause", "status": "done", "result": "paused"}
        async with http.post(live.url("/resume")) as response:
            assert response.status == 202
        while (command := await next_event(events2, "command"))["command"] != "resume":
            pass
        assert command["status"] == "done"
    await live.steps_advance(2)


async def test_pause_resume_and_validation_while_paused(live, http) -> None:
    async with http.post(live.url("/pause")) as response:
        assert response.status == 202 and (await response.json())["status"] == "queued"
    await live.wait_until(lambda: live.store.training_paused)
    step = live.store.progress.step
    count = live.store.validation.count
    done = await validate_once(live, http)  # a validation requested while paused runs
    assert live.store.validation.count == count + 1 and done["step"] == step
    await asyncio.sleep(0.3)  # a paused run does not step (negative check: a short look)
    assert live.store.progress.step == step and live.store.training_paused
    async with http.post(live.url("/resume")) as response:
        assert response.status == 202
    await live.steps_advance(2)


async def test_checkpoint_is_saved_or_clearly_unavailable(live, http) -> None:
    async with http.post(live.url("/checkpoint")) as response:
        body = await response.json()
    if live.supervisor.checkpoints_available:
        assert response.status == 202 and body["command"] == "checkpoint"
        await live.wait_until(lambda: live.store.last_checkpoint is not None)
    else:
        assert response.status == 501 and "checkpoint" in body["error"]


async def test_metrics_parse_and_match_the_store(live, http) -> None:
    async with http.get(live.url("/metrics")) as response:
        text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    step = families["vsr_step"].samples[0].value
    assert 2 <= step <= live.store.progress.step
    losses = {s.labels["component"]: s.value for s in families["vsr_loss"].samples}
    assert losses["total"] > 0
    requests = families["vsr_http_requests"].samples
    assert any(s.labels["route"] == "/api/snapshot" and s.value >= 1 for s in requests)
    assert "vsr_validations" in families and "vsr_learning_rate" in families


def saved_value(path: Path, key: str) -> object:
    """The value in runtime_config.json; the file is written atomically, so it always parses."""
    return json.loads(path.read_text())[key] if path.exists() else None


async def test_patch_config_applies_at_the_next_step(live, http) -> None:
    runtime_config = live.supervisor.run_dir / "runtime_config.json"
    for value in (2e-3, 1.5e-3, 3e-3):
        async with http.patch(live.url("/api/config"), json={"MAX_LR": value}) as response:
            body = await response.json()
        assert response.status == 202, body
        assert body["changes"] == {"MAX_LR": value} and body["status"] == "queued"
        await live.wait_until(lambda v=value: live.store.config_live["MAX_LR"] == v)
        applied_at = live.store.progress.step
        await live.wait_until(lambda s=applied_at: live.store.progress.step > s)
        # cosine from MAX_LR over 10^6 steps: the next step uses (almost exactly) the new peak
        assert live.store.progress.learning_rate == pytest.approx(value, rel=1e-3)
        snapshot = live.store.snapshot()
        assert snapshot["config_live"]["MAX_LR"] == value
        await live.wait_until(lambda v=value: saved_value(runtime_config, "MAX_LR") == v)
    saved = json.loads(runtime_config.read_text())
    assert set(saved) == set(live.store.config_live), "runtime_config.json is complete"

    async with http.patch(live.url("/api/config"), json={"MAX_LR": 5.0}) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert "MAX_LR" in error and "[1e-12, 1]" in error and "5.0" in error
    async with http.patch(live.url("/api/config"), json={"MAX_LRR": 1e-3}) as response:
        assert response.status == 400
        assert 'did you mean "MAX_LR"' in (await response.json())["error"]
    for start_only in ({"N_FEATS": 16}, {"USE_AMP": False}, {"N_FEATS": 16, "MAX_LR": 1e-3}):
        async with http.patch(live.url("/api/config"), json=start_only) as response:
            assert response.status == 409, start_only
            assert "only applies at start" in (await response.json())["error"]
    async with http.patch(live.url("/api/config"), json={"MIN_LR": 0.5}) as response:
        assert response.status == 400 and "MIN_LR" in (await response.json())["error"]
    async with http.patch(live.url("/api/config"), json={"MAX_LR": 1e-3}) as response:
        assert response.status == 202
    await live.wait_until(lambda: live.store.config_live["MAX_LR"] == 1e-3)
    async with http.get(live.url("/api/config")) as response:
        described = await response.json()
    assert described["live"]["MAX_LR"] == 1e-3
    max_lr = next(k for k in described["keys"] if k["key"] == "MAX_LR")
    assert max_lr["minimum"] == 1e-12 and max_lr["maximum"] == 1.0 and max_lr["description"]


async def test_validation_strips_are_pngs_of_the_latest_validation(live, http) -> None:
    await validate_once(live, http)
    async with http.get(live.url("/api/validation/images")) as response:
        strips = await response.json()
    assert strips["validation_count"] == live.store.validation.count and strips["images"]
    url = strips["images"][0]["url"]
    async with http.get(live.url(url)) as response:
        assert response.status == 200 and response.content_type == "image/png"
        png = await response.read()
        etag = response.headers["ETag"]
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    async with http.get(live.url(url), headers={"If-None-Match": etag}) as response:
        assert response.status == 304


async def test_a_second_panel_on_the_same_port_is_a_clear_error(live) -> None:
    config = live.supervisor.config.replace({"WEB_PORT": live.panel.port})
    with pytest.raises(PortInUseError, match=f"127.0.0.1:{live.panel.port}.*already in use"):
        await WebPanel(live.supervisor, config).start()


async def test_openapi_documents_every_route(live, http) -> None:
    async with http.get(live.url("/api/openapi.json")) as response:
        document = await response.json()
    documented = {(m.upper(), path) for path, ops in document["paths"].items() for m in ops}
    routed = {
        (route.method, route.resource.canonical)
        for route in live.panel.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert routed == documented
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert any(code.startswith("2") for code in operation["responses"]), (method, path)
