"""Read-only routes: the panel's files, the snapshot and its download, history, Statistik files,
validation strips, the event stream, the OpenAPI document and Prometheus metrics.

Handlers read `store.snapshot()` (or the store's history) and answer; the only files they touch
are the panel's own static files and the `Statistik_<step>.json` files the runtime wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from vsr_async.files.statistics import (
    list_statistics,
    serialize_snapshot,
    statistics_name,
    statistics_step,
)
from vsr_async.names import displayable, is_valid_text
from web.events import stream_events
from web.keys import EVENTS, IMAGES, OPENAPI, REGISTRY, SUPERVISOR
from web.middlewares import ApiError

routes = web.RouteTableDef()

STATIC_DIR = Path(__file__).parent / "static"
# The only files served from STATIC_DIR (no directory listing, no path resolution from input).
STATIC_FILES: dict[str, str] = {
    "app.js": "text/javascript",
    "charts.js": "text/javascript",
    "style.css": "text/css",
    "vendor/uPlot.iife.min.js": "text/javascript",
    "vendor/uPlot.min.css": "text/css",
    "vendor/uPlot.LICENSE": "text/plain",
}


def json_dumps(data: Any) -> str:
    """Compact JSON for answers; a string that is not valid UTF-8 (a file name of any bytes
    that reached the data unescaped) is escaped rather than failing the answer with a 500."""
    text = json.dumps(data, ensure_ascii=False)
    return text if is_valid_text(text) else json.dumps(displayable(data), ensure_ascii=False)


def json_ok(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=json_dumps)


# --- the panel --------------------------------------------------------------------------------


@routes.get("/")
async def panel(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC_DIR / "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@routes.get("/static/{path:.+}")
async def static_file(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"]
    content_type = STATIC_FILES.get(path)
    if content_type is None:
        raise ApiError(404, f"not found: {request.path}")
    response = web.FileResponse(STATIC_DIR / path)
    response.content_type = content_type
    response.headers["Cache-Control"] = "no-cache"  # revalidated by ETag/Last-Modified
    return response


# --- snapshot and history ---------------------------------------------------------------------


@routes.get("/api/snapshot")
async def snapshot(request: web.Request) -> web.Response:
    return json_ok(request.app[SUPERVISOR].store.snapshot())


@routes.get("/api/snapshot/download")
async def snapshot_download(request: web.Request) -> web.Response:
    """The snapshot as the Statistik writer would write it now: same serializer, same bytes."""
    snap = request.app[SUPERVISOR].store.snapshot()
    name = statistics_name(snap["step_current"])
    return web.Response(
        body=serialize_snapshot(snap),
        content_type="application/json",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@routes.get("/api/history")
async def history(request: web.Request) -> web.Response:
    return json_ok(request.app[SUPERVISOR].store.history())


# --- Statistik files --------------------------------------------------------------------------


def _describe_files(run_dir: Path) -> list[dict[str, Any]]:
    files = []
    for step, path in list_statistics(run_dir):
        try:
            info = path.lstat()
        except OSError:
            continue  # replaced or removed since the listing
        if not stat.S_ISREG(info.st_mode):
            continue  # the runtime writes regular files only; a link is not one of them
        files.append(
            {
                "name": path.name,
                "step": step,
                "size_bytes": info.st_size,
                "modified": datetime.fromtimestamp(info.st_mtime, UTC)
                .isoformat(timespec="seconds")
                .replace("+00:00", "Z"),
                "url": f"/api/statistics/{step}",
            }
        )
    return files


@routes.get("/api/statistics")
async def statistics_list(request: web.Request) -> web.Response:
    files = await _in_thread(_describe_files, request.app[SUPERVISOR].run_dir)
    return json_ok({"files": files})


def requested_step(requested: str) -> int | None:
    """`<step>` or `Statistik_<step>.json` with canonical ASCII digits; anything else is None."""
    if not requested.isascii():
        return None
    if requested.isdigit():
        return int(requested) if str(int(requested)) == requested else None
    return statistics_step(requested)


def read_statistik(run_dir: Path, step: int) -> bytes | None:
    """The bytes of `run_dir/Statistik_<step>.json` if it is a regular file (a link is refused:
    O_NOFOLLOW, so nothing can be swapped in between the check and the read)."""
    path = Path(run_dir) / statistics_name(step)  # built from an integer, never from the URL
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return None
            return file.read()
    except OSError:  # missing, a link (ELOOP), unreadable
        return None


@routes.get("/api/statistics/{step}")
async def statistics_content(request: web.Request) -> web.Response:
    """`{step}` is the step or the file name `Statistik_<step>.json`."""
    requested = request.match_info["step"]
    step = requested_step(requested)
    data = None
    if step is not None:
        data = await _in_thread(read_statistik, request.app[SUPERVISOR].run_dir, step)
    if step is None or data is None:
        raise ApiError(404, f"no Statistik file {requested[:100]!r} in this run")
    name = statistics_name(step)
    return web.Response(
        body=data,
        content_type="application/json",
        charset="utf-8",
        headers={"Content-Disposition": f'inline; filename="{name}"'},
    )


async def _in_thread(fn: Any, *args: Any) -> Any:
    """Blocking file-system work (a large run directory, a slow disk) off the event loop."""
    return await asyncio.to_thread(fn, *args)


# --- validation strips ------------------------------------------------------------------------


@routes.get("/api/validation/images")
async def validation_images(request: web.Request) -> web.Response:
    return json_ok(request.app[IMAGES].describe())


@routes.get(r"/api/validation/images/{index:\d{1,6}}.png")
async def validation_image(request: web.Request) -> web.Response:
    images = request.app[IMAGES]
    index = int(request.match_info["index"])
    count = images.validation_count
    if not images.has(index):
        raise ApiError(404, f"no validation strip {index} (validations so far: {count})")
    etag = f'"strip-{count}-{index}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    png = await images.png(index)
    if png is None:  # a new validation with fewer strips finished meanwhile
        raise ApiError(404, f"no validation strip {index}")
    return web.Response(
        body=png, content_type="image/png", headers={"ETag": etag, "Cache-Control": "no-cache"}
    )


# --- requests, events, documentation, metrics -------------------------------------------------


@routes.get("/api/requests/{request_id}")
async def request_status(request: web.Request) -> web.Response:
    """A validation or a config change, by the id its 202 answer gave (`kind` says which)."""
    request_id = request.match_info["request_id"]
    found = request.app[SUPERVISOR].request(request_id)
    if found is None:
        raise ApiError(404, f"no request {request_id[:100]!r} (unknown or expired)")
    return json_ok(found.to_dict())


@routes.get("/api/events")
async def events(request: web.Request) -> web.StreamResponse:
    return await stream_events(request, request.app[EVENTS])


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_ok(request.app[OPENAPI])


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format (OpenMetrics when the scraper's Accept header asks for it)."""
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[REGISTRY])  # the collector reads the store right here
    return web.Response(body=body, headers={"Content-Type": content_type})
