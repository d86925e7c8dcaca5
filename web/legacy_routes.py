"""The predecessor's panel paths, kept for bookmarks and scripts (PREDECESSOR §9.1).

`/monitoring` (and `/monitoring/`) serve the panel, `/monitoring/data` the snapshot (the bytes a
Statistik file would hold now), `/monitoring/config` and `/config` the refresh settings, and
`POST /monitoring/command` takes its `{"action": ...}` bodies, mapped onto our commands:
`trigger_validation` → validate, `save_checkpoint` → checkpoint, `toggle_pause` → pause/resume,
`change_refresh` `{interval}` → stored (1–60 s) and reported by `/monitoring/config`. The replies
keep its shape (200 `{"success": true, "message": ...}`); a refusal is a 4xx with
`{"success": false, "message": ..., "error": ...}`. The app's middlewares apply as on every
route: token, Host and Origin checks, body limit.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from vsr_async.files.statistics import serialize_snapshot
from vsr_async.runtime.commands import Trigger
from vsr_async.runtime.supervisor import CommandNotAvailable
from web import handlers
from web.control import read_json, require_running
from web.keys import EVENTS, LEGACY_PANEL, SUPERVISOR
from web.middlewares import ApiError

routes = web.RouteTableDef()

ACTIONS = ("trigger_validation", "save_checkpoint", "toggle_pause", "change_refresh")
REFRESH_DEFAULT_S = 5  # the predecessor's page polled every 5 s
REFRESH_RANGE_S = (1, 60)
NO_CACHE = {"Cache-Control": "no-cache"}


def legacy_state() -> dict[str, Any]:
    """What `app[LEGACY_PANEL]` holds (the app's state is fixed once it runs: the dict is not)."""
    return {"refresh_interval_seconds": REFRESH_DEFAULT_S}


@routes.get("/monitoring")
@routes.get("/monitoring/")
async def monitoring_page(request: web.Request) -> web.StreamResponse:
    return await handlers.panel(request)


@routes.get("/monitoring/data")
async def monitoring_data(request: web.Request) -> web.Response:
    snapshot = request.app[SUPERVISOR].store.snapshot()
    return web.Response(
        body=serialize_snapshot(dict(snapshot)),
        content_type="application/json",
        charset="utf-8",
        headers=NO_CACHE,
    )


@routes.get("/monitoring/config")
@routes.get("/config")
async def monitoring_config(request: web.Request) -> web.Response:
    seconds = request.app[LEGACY_PANEL]["refresh_interval_seconds"]
    body = {"refresh_interval_seconds": seconds, "auto_refresh_enabled": True}
    return web.json_response(body, headers=NO_CACHE)


@routes.post("/monitoring/command")
async def monitoring_command(request: web.Request) -> web.Response:
    try:
        reply = await run_action(request, await read_json(request))
    except ApiError as exc:
        body = {"success": False, "message": exc.message, "error": exc.message}
        return web.json_response(body, status=exc.status)
    return web.json_response({"success": True, **reply})


async def run_action(request: web.Request, body: Any) -> dict[str, Any]:
    """Queue what `body` asks for; the reply's fields beside `success`."""
    if not isinstance(body, dict):
        raise ApiError(400, 'expected a JSON object {"action": ...}')
    action = body.get("action", "")
    supervisor, events = request.app[SUPERVISOR], request.app[EVENTS]
    if action == "trigger_validation":
        try:
            queued = await supervisor.request_validation(Trigger.WEB)
        except CommandNotAvailable as exc:
            raise ApiError(409, f"cannot validate: {exc}") from None
        events.watch_validation(queued)
        url = f"/api/requests/{queued.id}"
        return {"message": "Validation queued", "request_id": queued.id, "url": url}
    if action == "save_checkpoint":
        if not supervisor.checkpoints_available:
            raise ApiError(501, "checkpoints are off for this run")
        require_running(supervisor, "save a checkpoint")
        events.watch_command("checkpoint", supervisor.save_checkpoint("web"))
        return {"message": "Checkpoint save queued"}
    if action == "toggle_pause":
        require_running(supervisor, "pause or resume")
        paused = supervisor.store.training_paused
        events.watch_command("pause/resume", supervisor.toggle_pause())
        return {"message": "Pause toggle queued", "paused": not paused}  # as it will be
    if action == "change_refresh":
        interval = body.get("interval", REFRESH_DEFAULT_S)
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise ApiError(400, f"interval must be a number of seconds, got {interval!r:.100}")
        low, high = REFRESH_RANGE_S
        seconds = max(low, min(high, interval))
        request.app[LEGACY_PANEL]["refresh_interval_seconds"] = seconds
        return {"interval": seconds}
    known = ", ".join(ACTIONS)
    raise ApiError(400, f"Unknown action: {str(action)[:100]} (known: {known})")


# --- the OpenAPI description of these routes (web/openapi.py adds it) --------------------------

_REFUSAL = {
    "type": "object",
    "required": ["success", "message", "error"],
    "properties": {
        "success": {"const": False},
        "message": {"type": "string"},
        "error": {"type": "string"},
    },
}
_REPLY = {
    "type": "object",
    "required": ["success"],
    "properties": {
        "success": {"const": True},
        "message": {"type": "string"},
        "request_id": {"type": "string"},
        "url": {"type": "string", "description": "/api/requests/<request_id>"},
        "paused": {"type": "boolean", "description": "the state once the toggle applies"},
        "interval": {"type": "number", "minimum": 1, "maximum": 60},
    },
}
_REFRESH = {
    "type": "object",
    "required": ["refresh_interval_seconds", "auto_refresh_enabled"],
    "properties": {
        "refresh_interval_seconds": {"type": "number", "minimum": 1, "maximum": 60},
        "auto_refresh_enabled": {"const": True},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def legacy_paths(op: Any) -> dict[str, Any]:
    """The paths for the OpenAPI document; `op` builds an operation as openapi.py does."""
    page = {"description": "the panel page", "content": {"text/html": {}}}
    refresh = op(
        "Refresh settings (predecessor path)",
        {"200": _json(_REFRESH, "settings")},
        tags=("predecessor",),
    )
    command = op(
        "The predecessor's commands: trigger_validation, save_checkpoint, toggle_pause, "
        "change_refresh",
        {
            "200": _json(_REPLY, "queued (refresh: stored)"),
            "400": _json(_REFUSAL, "malformed JSON, not an object, unknown action, bad interval"),
            "409": _json(_REFUSAL, "the run is stopping"),
            "501": _json(_REFUSAL, "checkpoints are off for this run"),
        },
        unsafe=True,
        body={
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["action"],
                        "properties": {
                            "action": {"enum": list(ACTIONS)},
                            "interval": {"type": "number", "description": "change_refresh, s"},
                        },
                    }
                }
            },
        },
        tags=("predecessor",),
    )
    snapshot = _json({"$ref": "#/components/schemas/Snapshot"}, "the snapshot")
    tags = ("predecessor",)
    return {
        "/monitoring": {"get": op("The panel (predecessor path)", {"200": page}, tags=tags)},
        "/monitoring/": {"get": op("The panel (predecessor path)", {"200": page}, tags=tags)},
        "/monitoring/data": {
            "get": op(
                "Current snapshot (predecessor path), as a Statistik file would hold it",
                {"200": snapshot},
                tags=tags,
            )
        },
        "/monitoring/config": {"get": refresh},
        "/config": {"get": refresh},
        "/monitoring/command": {"post": command},
    }
