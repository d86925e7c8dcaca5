"""The OpenAPI 3.1 document of every route (`GET /api/openapi.json`), with response schemas
(`schemas.py`), built once per app: the security part depends on whether a token is required.
"""

from __future__ import annotations

import functools
from typing import Any

from web.handlers import STATIC_FILES
from web.legacy_routes import legacy_paths
from web.schemas import (
    COMMAND_ACCEPTED,
    CONFIG_ACCEPTED,
    LOSS_POINT,
    QUALITY_POINT,
    REQUEST_SCHEMAS,
    SNAPSHOT_SCHEMA,
    STATISTICS_LIST,
    STRIPS,
    config_change_schema,
)


def _json(schema: dict[str, Any] | str, description: str) -> dict[str, Any]:
    if isinstance(schema, str):
        schema = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


def _operation(
    summary: str,
    responses: dict[str, Any],
    *,
    token_required: bool,
    unsafe: bool = False,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    tags: tuple[str, ...] = (),
) -> dict[str, Any]:
    responses = dict(responses)
    responses["421"] = _error("the Host header does not name this server (DNS rebinding guard)")
    if token_required:
        responses["401"] = _error("missing or invalid token")
    if unsafe:
        responses["403"] = _error("cross-site request (Origin does not match)")
        responses["413"] = _error("request body over 64 KiB")
        responses.setdefault("400", _error("malformed JSON body"))
    operation: dict[str, Any] = {"summary": summary, "responses": responses, "tags": list(tags)}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    return operation


def build_openapi(*, token_required: bool) -> dict[str, Any]:
    op = functools.partial(_operation, token_required=token_required)
    snapshot_description = "the run's state in the contract's key names (DESIGN §3)"
    paths: dict[str, Any] = {
        "/": {"get": op("The panel (HTML)", {"200": _html("the panel page")}, tags=("panel",))},
        "/static/{path}": {
            "get": op(
                "The panel's static files (only the listed ones)",
                {"200": {"description": "the file"}, "404": _error("no such file")},
                parameters=[
                    {
                        "name": "path",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": sorted(STATIC_FILES)},
                    }
                ],
                tags=("panel",),
            )
        },
        "/api/snapshot": {
            "get": op("Current snapshot", {"200": _json("Snapshot", snapshot_description)})
        },
        "/api/snapshot/download": {
            "get": op(
                "Current snapshot as an attachment Statistik_<step>.json (the writer's bytes)",
                {
                    "200": {
                        **_json("Snapshot", snapshot_description),
                        "headers": {
                            "Content-Disposition": {
                                "schema": {"type": "string"},
                                "description": 'attachment; filename="Statistik_<step>.json"',
                            }
                        },
                    }
                },
            )
        },
        "/api/history": {
            "get": op(
                "Loss/learning-rate points (logging cadence) and quality points (validations)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["loss", "quality"],
                            "properties": {
                                "loss": {"type": "array", "items": LOSS_POINT},
                                "quality": {"type": "array", "items": QUALITY_POINT},
                            },
                        },
                        "chart series",
                    )
                },
            )
        },
        "/api/statistics": {
            "get": op(
                "Saved Statistik files, oldest step first", {"200": _json(STATISTICS_LIST, "files")}
            )
        },
        "/api/statistics/{step}": {
            "get": op(
                "Content of a saved Statistik file (byte for byte)",
                {
                    "200": _json(
                        {"type": "object", "required": ["schema_version", "step_current"]},
                        "the file",
                    ),
                    "404": _error("no such file in this run (or not a Statistik name)"),
                },
                parameters=[
                    {
                        "name": "step",
                        "in": "path",
                        "required": True,
                        "description": "the step, or the file name Statistik_<step>.json",
                        "schema": {
                            "type": "string",
                            "pattern": r"^([0-9]+|Statistik_[0-9]+\.json)$",
                        },
                    }
                ],
            )
        },
        "/api/events": {
            "get": op(
                "Server-sent events: `snapshot` (≤ 4/s), `history` (new chart points), "
                "`command`, `validation`, `log`, `stopped`. EventSource cannot send headers: "
                "pass the token as ?token= when one is required.",
                {"200": {"description": "event stream", "content": {"text/event-stream": {}}}},
                tags=("events",),
            )
        },
        "/api/validation/images": {
            "get": op("Strips of the latest validation", {"200": _json(STRIPS, "strips")})
        },
        "/api/validation/images/{index}.png": {
            "get": op(
                "Strip `index` of the latest validation: LR (bicubic) | output | GT",
                {
                    "200": {"description": "PNG", "content": {"image/png": {}}},
                    "304": {"description": "unchanged (If-None-Match)"},
                    "404": _error("no such strip (yet)"),
                },
                parameters=[
                    {
                        "name": "index",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 999999},
                    }
                ],
            )
        },
        "/api/requests/{request_id}": {
            "get": op(
                "A validation or config-change request: its status and, when done, the "
                "metrics and Statistik file (validation) or the applied values (config)",
                {
                    "200": _json(
                        {"oneOf": [{"$ref": f"#/components/schemas/{n}"} for n in REQUEST_SCHEMAS]},
                        "the request",
                    ),
                    "404": _error("unknown or expired request id"),
                },
                parameters=[
                    {
                        "name": "request_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/api/config": {
            "get": op(
                "Live configuration: current values and the keys that may change mid-run",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["live", "keys"],
                            "properties": {
                                "live": {"type": "object"},
                                "keys": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                        "live keys",
                    )
                },
                tags=("config",),
            ),
            "patch": op(
                "Change live keys; checked against the changes accepted and not applied yet, "
                "applied at the next step boundary",
                {
                    "202": {
                        **_json(CONFIG_ACCEPTED, "queued (follow url / GET /api/requests/{id})"),
                        "headers": {
                            "Location": {
                                "schema": {"type": "string"},
                                "description": "/api/requests/<request_id>",
                            }
                        },
                    },
                    "400": _error(
                        "malformed JSON, unknown key, a value out of range, or keys that do not "
                        "fit together (named)"
                    ),
                    "409": _error(
                        "a start-only key; a change that fits the applied config but not a "
                        "change accepted before it and not applied yet (keys and request named); "
                        "or the run is stopping"
                    ),
                },
                unsafe=True,
                body={
                    "required": True,
                    "content": {"application/json": {"schema": config_change_schema()}},
                },
                tags=("config",),
            ),
        },
        "/api/openapi.json": {
            "get": op("This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")})
        },
        "/metrics": {
            "get": op(
                "Prometheus metrics (text exposition format)",
                {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {}, "application/openmetrics-text": {}},
                    }
                },
            )
        },
        "/validate": {
            "post": op(
                "Request a validation (coalesced while one is queued and not started)",
                {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["request_id", "status"],
                            "properties": {
                                "request_id": {"type": "string"},
                                "status": {"enum": ["queued", "running"]},
                                "url": {"type": "string"},
                            },
                        },
                        "queued (follow url / GET /api/requests/{id})",
                    ),
                    "409": _error("the run is stopping"),
                },
                unsafe=True,
                tags=("control",),
            )
        },
    }
    for command, summary in (
        ("pause", "Pause training at the next step boundary"),
        ("resume", "Resume training"),
        ("checkpoint", "Save a checkpoint at the next step boundary"),
        ("stop", "Stop the run: final checkpoint, pending files written, exit 0"),
    ):
        responses = {
            "202": _json("CommandAccepted", "queued"),
            "409": _error("the run is stopping"),
        }
        if command == "checkpoint":
            responses["501"] = _error("checkpoints are off for this run")
        paths[f"/{command}"] = {"post": op(summary, responses, unsafe=True, tags=("control",))}
    paths.update(legacy_paths(op))  # the predecessor's /monitoring paths

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "vsr_async web panel",
            "version": "1",
            "description": "REST API and panel of one vsr_async training run. Every client "
            'error is a 4xx with a JSON body {"error": "..."}.',
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "Snapshot": SNAPSHOT_SCHEMA,
                "CommandAccepted": COMMAND_ACCEPTED,
                **REQUEST_SCHEMAS,
            }
        },
    }
    if token_required:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "queryToken": {"type": "apiKey", "in": "query", "name": "token"},
        }
        document["security"] = [{"bearer": []}, {"queryToken": []}]
        document["info"]["description"] += (
            " Every route needs the token: 'Authorization: Bearer <token>' on any method; "
            "GET/HEAD also accept ?token=<token> (EventSource, images, downloads) and the "
            "session cookie that a ?token= page load sets. POST/PATCH need the header."
        )
    return document


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {}}}
