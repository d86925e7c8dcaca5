"""Control routes: validate, pause, resume, checkpoint, stop, and the live configuration.

Each handler checks the request, enqueues a command on the supervisor and answers at once
(202); the supervisor carries it out at the next step boundary, and the outcome reaches the
panel as an SSE `command` (or `validation`) event. No handler touches the model or the store.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from aiohttp import web

from vsr_async.errors import (
    CommandNotAvailable,
    ConfigError,
    LiveConfigConflict,
    StartOnlyKeyError,
)
from vsr_async.runtime.commands import Phase, Trigger
from vsr_async.runtime.live_config import live_values
from vsr_async.runtime.supervisor import Supervisor
from vsr_async.settings import Config, describe_type, field_docs, live_keys
from web.keys import EVENTS, SUPERVISOR
from web.middlewares import ApiError

routes = web.RouteTableDef()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request) -> Any:
    """The request's JSON body, or None when there is none; malformed JSON → 400."""
    raw = await request.read() if request.body_exists else b""
    if not raw.strip():
        return None
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None


def require_running(supervisor: Supervisor, command: str) -> None:
    if supervisor.phase in (Phase.STOPPING, Phase.STOPPED):
        raise ApiError(409, f"cannot {command}: the run is stopping")


def accepted(command: str, **extra: Any) -> web.Response:
    return web.json_response({"command": command, "status": "queued", **extra}, status=202)


# --- commands ---------------------------------------------------------------------------------


@routes.post("/validate")
async def validate(request: web.Request) -> web.Response:
    await read_json(request)  # no body is expected, but a malformed one is an error
    supervisor = request.app[SUPERVISOR]
    try:
        queued = await supervisor.request_validation(Trigger.WEB)
    except CommandNotAvailable as exc:
        raise ApiError(409, f"cannot validate: {exc}") from None
    request.app[EVENTS].watch_validation(queued)
    url = f"/api/requests/{queued.id}"
    return web.json_response(
        {"request_id": queued.id, "status": queued.status.value, "url": url},
        status=202,
        headers={"Location": url},
    )


@routes.post("/pause")
async def pause(request: web.Request) -> web.Response:
    await read_json(request)
    supervisor = request.app[SUPERVISOR]
    require_running(supervisor, "pause")
    request.app[EVENTS].watch_command("pause", supervisor.pause())
    return accepted("pause")


@routes.post("/resume")
async def resume(request: web.Request) -> web.Response:
    await read_json(request)
    supervisor = request.app[SUPERVISOR]
    require_running(supervisor, "resume")
    request.app[EVENTS].watch_command("resume", supervisor.resume())
    return accepted("resume")


@routes.post("/checkpoint")
async def checkpoint(request: web.Request) -> web.Response:
    await read_json(request)
    supervisor = request.app[SUPERVISOR]
    if not supervisor.checkpoints_available:
        raise ApiError(501, "checkpoints are off for this run")
    require_running(supervisor, "save a checkpoint")
    request.app[EVENTS].watch_command("checkpoint", supervisor.save_checkpoint("web"))
    return accepted("checkpoint")


@routes.post("/stop")
async def stop(request: web.Request) -> web.Response:
    await read_json(request)
    supervisor = request.app[SUPERVISOR]
    require_running(supervisor, "stop")
    request.app[EVENTS].watch_command("stop", supervisor.stop("stop requested in the web panel"))
    return accepted("stop")


# --- live configuration -----------------------------------------------------------------------


def describe_live_keys(config: Config) -> list[dict[str, Any]]:
    hints = typing.get_type_hints(Config)
    docs = field_docs()
    described = []
    for f in dataclasses.fields(Config):
        if f.name not in live_keys():
            continue
        tp = hints[f.name]
        described.append(
            {
                "key": f.name,
                "value": getattr(config, f.name),
                "type": "integer" if tp is int else "number" if tp is float else describe_type(tp),
                "minimum": f.metadata.get("lo"),
                "maximum": f.metadata.get("hi"),
                "description": docs.get(f.name, ""),
            }
        )
    return described


@routes.get("/api/config")
async def get_config(request: web.Request) -> web.Response:
    config = request.app[SUPERVISOR].config
    return web.json_response({"live": live_values(config), "keys": describe_live_keys(config)})


@routes.patch("/api/config")
async def patch_config(request: web.Request) -> web.Response:
    """Change live keys: 400 names the key and its range; 409 refuses start-only keys and a
    change that collides with one accepted but not applied yet (both keys named)."""
    changes = await read_json(request)
    if not isinstance(changes, dict) or not changes:
        raise ApiError(400, 'expected a JSON object of KEY: value, e.g. {"MAX_LR": 0.0002}')
    supervisor = request.app[SUPERVISOR]
    require_running(supervisor, "change the configuration")
    try:
        queued = supervisor.apply_config(changes)
    except (StartOnlyKeyError, LiveConfigConflict) as exc:
        raise ApiError(409, str(exc)) from None
    except ConfigError as exc:
        raise ApiError(400, str(exc)) from None
    except CommandNotAvailable as exc:
        raise ApiError(409, f"cannot change the configuration: {exc}") from None
    request.app[EVENTS].watch_command("config", queued.result, request_id=queued.id)
    url = f"/api/requests/{queued.id}"
    return web.json_response(
        {
            "command": "config",
            "status": queued.status.value,
            "request_id": queued.id,
            "url": url,
            "changes": queued.changes,
            "applies": "at the next step boundary",
        },
        status=202,
        headers={"Location": url},
    )
