"""The application factory: `create_app(supervisor, config, run_logging)` → `web.Application`.

All state lives on the app under the `web.keys` AppKeys. `cleanup_ctx` starts the SSE publisher
and the log subscription and tears down only what it started; `on_shutdown` ends the event
streams first, so the runner's cleanup never waits on an open browser tab.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from vsr_async.files.logs import RunLogging
from vsr_async.runtime.supervisor import Supervisor
from vsr_async.settings import Config
from web import control, handlers, legacy_routes
from web.events import EventHub
from web.images import StripImages
from web.keys import (
    CONFIG,
    EVENTS,
    IMAGES,
    LEGACY_PANEL,
    OPENAPI,
    REGISTRY,
    REQUEST_COUNTER,
    RUN_LOGGING,
    SECURITY,
    SUPERVISOR,
)
from web.metrics import build_registry, request_counter
from web.middlewares import MAX_BODY_BYTES, add_security_headers, build_middlewares
from web.openapi import build_openapi
from web.security import SecurityPolicy

log = logging.getLogger(__name__)


def create_app(
    supervisor: Supervisor, config: Config, run_logging: RunLogging | None = None
) -> web.Application:
    policy = SecurityPolicy.from_config(config)
    hub = EventHub(supervisor.store)
    registry = build_registry(supervisor.store, lambda: hub.client_count)
    requests = request_counter(registry)
    app = web.Application(
        middlewares=build_middlewares(policy, requests), client_max_size=MAX_BODY_BYTES
    )
    app[SUPERVISOR] = supervisor
    app[CONFIG] = config
    if run_logging is not None:
        app[RUN_LOGGING] = run_logging
    app[SECURITY] = policy
    app[EVENTS] = hub
    app[IMAGES] = StripImages(supervisor.store)
    app[REGISTRY] = registry
    app[REQUEST_COUNTER] = requests
    app[OPENAPI] = build_openapi(token_required=policy.token_required)
    app.add_routes(handlers.routes)
    app.add_routes(control.routes)
    app[LEGACY_PANEL] = legacy_routes.legacy_state()
    app.add_routes(legacy_routes.routes)  # the predecessor's /monitoring paths
    app.cleanup_ctx.append(publish_events)
    app.cleanup_ctx.append(forward_log_lines)
    app.on_shutdown.append(close_event_streams)
    app.on_response_prepare.append(add_security_headers)
    return app


async def publish_events(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[EVENTS].run(), name="web-events")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def forward_log_lines(app: web.Application) -> AsyncIterator[None]:
    """Log records arrive on the logging thread; hop to the loop before touching the hub."""
    run_logging = app.get(RUN_LOGGING)
    if run_logging is None:
        yield
        return
    loop = asyncio.get_running_loop()
    hub = app[EVENTS]

    def on_record(line: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while a record was in flight
            loop.call_soon_threadsafe(hub.publish_log, line)

    unsubscribe = run_logging.subscribe(on_record)
    yield
    with contextlib.suppress(ValueError):
        unsubscribe()


async def close_event_streams(app: web.Application) -> None:
    await app[EVENTS].close()
