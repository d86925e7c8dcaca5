"""Access rules: the token on every route, where it may come from, Host and Origin checks.

The access policy is unit-tested for binds the tests cannot use (0.0.0.0, a LAN address); the
token flow runs against a real run on 127.0.0.1 with WEB_TOKEN set, which turns the token on.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from web_helpers import LiveRun, read_events, running_panel, web_config

from web.security import SecurityPolicy, TokenCheck

TOKEN = "correct-horse-battery-staple"


class Settings:
    def __init__(self, host: str, token: str = "") -> None:
        self.WEB_HOST, self.WEB_TOKEN = host, token


def request(method: str = "GET", path: str = "/", **headers: str):
    return make_mocked_request(method, path, headers=headers)


def test_loopback_without_token_needs_none() -> None:
    policy = SecurityPolicy.from_config(Settings("127.0.0.1"))
    assert not policy.token_required
    assert policy.check_token(request()) is TokenCheck.NOT_REQUIRED


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "gpu-box.lab"])
def test_other_binds_get_a_generated_token(host: str) -> None:
    first = SecurityPolicy.from_config(Settings(host))
    second = SecurityPolicy.from_config(Settings(host))
    assert first.token_required and first.token_generated
    assert first.token is not None and len(first.token) >= 32 and first.token != second.token
    configured = SecurityPolicy.from_config(Settings(host, "mine"))
    assert configured.token == "mine" and not configured.token_generated


def test_host_allow_list() -> None:
    loopback = SecurityPolicy.from_config(Settings("127.0.0.1"))
    for ok in ("127.0.0.1:5050", "localhost:8080", "LOCALHOST", "[::1]:5050", "localhost."):
        assert loopback.host_allowed(ok), ok
    for bad in ("evil.example", "127.0.0.1.nip.io:5050", "192.168.1.20:5050", "", None, "a b"):
        assert not loopback.host_allowed(bad), bad
    lan = SecurityPolicy.from_config(Settings("0.0.0.0"))
    assert lan.host_allowed("192.168.1.20:5050") and lan.host_allowed("[fe80::1]:5050")
    assert not lan.host_allowed("rebind.attacker.example:5050")


def test_origin_rules() -> None:
    policy = SecurityPolicy.from_config(Settings("127.0.0.1"))
    host = "127.0.0.1:5050"
    allowed = [
        request("POST", "/pause", Host=host),
        request("POST", "/pause", Host=host, Origin="http://127.0.0.1:5050"),
        request("GET", "/", Host=host, Origin="http://evil.example"),  # reads are not writes
    ]
    refused = [
        request("POST", "/pause", Host=host, Origin="http://evil.example"),
        request("POST", "/pause", Host=host, Origin="http://127.0.0.1:6060"),
        request("PATCH", "/api/config", Host=host, Origin="null"),
        request("POST", "/stop", Host=host, **{"Sec-Fetch-Site": "cross-site"}),
    ]
    assert all(policy.origin_allowed(r) for r in allowed)
    assert not any(policy.origin_allowed(r) for r in refused)


def test_token_sources() -> None:
    policy = SecurityPolicy.from_config(Settings("127.0.0.1", TOKEN))
    assert policy.check_token(request(Authorization=f"Bearer {TOKEN}")) is TokenCheck.OK
    assert policy.check_token(request(Authorization="Bearer nope")) is TokenCheck.WRONG
    assert policy.check_token(request(Authorization=f"Basic {TOKEN}")) is TokenCheck.WRONG
    assert policy.check_token(request(path=f"/?token={TOKEN}")) is TokenCheck.OK_FROM_QUERY
    assert policy.check_token(request("POST", f"/pause?token={TOKEN}")) is TokenCheck.MISSING
    assert policy.check_token(request()) is TokenCheck.MISSING


async def test_every_route_needs_the_token(tiny_dataset: Path, tmp_path: Path) -> None:
    config = web_config(tiny_dataset, tmp_path / "Learn", WEB_TOKEN=TOKEN)
    async with running_panel(config) as live, aiohttp.ClientSession() as http:
        await live.steps_advance(1)
        step_before = live.store.progress.step
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(live.url("/api/openapi.json"), headers=bearer) as response:
            document = await response.json()
        assert document["security"]
        routes = [
            (method.upper(), re.sub(r"\{[^}]+\}", "0", path))
            for path, operations in document["paths"].items()
            for method in operations
        ] + [("GET", "/no/such/path")]
        assert len(routes) >= 20
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                async with http.request(method, live.url(path), headers=headers) as response:
                    assert response.status == 401, (method, path, headers)
                    assert "error" in await response.json()
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
        await expect_token_accepted(live, http, bearer)
        assert not live.store.training_paused
        assert await live.steps_advance(2) > step_before


async def expect_token_accepted(live: LiveRun, http: aiohttp.ClientSession, bearer: dict) -> None:
    async with http.get(live.url("/api/snapshot"), headers=bearer) as response:
        assert response.status == 200
    async with http.post(live.url("/validate"), headers=bearer) as response:
        assert response.status == 202
        request_id = (await response.json())["request_id"]
    await asyncio.wait_for(live.supervisor.request(request_id).result, 60)

    # a browser: ?token= once on the page; the cookie then serves the static files and reloads
    # (unsafe=True: accept cookies from an IP-address host, as browsers do)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(live.url(f"/?token={TOKEN}")) as response:
            assert response.status == 200
            assert "HttpOnly" in response.headers["Set-Cookie"]
            assert "SameSite=Strict" in response.headers["Set-Cookie"]
        for path in ("/", "/static/app.js", "/api/validation/images/0.png"):
            async with browser.get(live.url(path)) as response:
                assert response.status == 200, path
        async with browser.post(live.url("/pause")) as response:
            assert response.status == 401, "writes need the header, not the cookie"
    async with http.post(live.url(f"/pause?token={TOKEN}")) as response:
        assert response.status == 401, "writes need the header, not the query parameter"
    async with http.get(live.url(f"/api/events?token={TOKEN}")) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        first = await anext(read_events(response))
        assert first.name == "snapshot"
    async with http.get(live.url("/api/events?token=wrong")) as response:
        assert response.status == 401
