"""Middlewares: request counting, one error translator, access rules and the body limit.

Every client error leaves as a 4xx with a JSON body `{"error": "..."}`; a bug in a handler is
logged with its traceback and answered with a JSON 500, and the server (and the run) go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import Counter
from yarl import URL

from web.security import SecurityPolicy, TokenCheck

if TYPE_CHECKING:  # aiohttp's middleware Protocol; only annotations name it
    from aiohttp.typedefs import Middleware

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After", "Location")


class ApiError(Exception):
    """A client error with the message the client reads; handlers raise it, not HTTPException."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.json_response({"error": message}, status=status, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def _message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"not found: {request.path}"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"method {request.method} is not allowed on {request.path} (allowed: {allowed})"
    if exc.status == 413:
        return f"request body too large (limit {MAX_BODY_BYTES // 1024} KiB)"
    text = exc.text or ""
    if text and not text.startswith(f"{exc.status}:"):
        return text
    return exc.reason


def target_host_allowed(policy: SecurityPolicy, target: str) -> bool:
    """An absolute-form request target ("GET http://host/path") must name this server too."""
    if target.startswith("/"):
        return True
    try:
        authority = URL(target).raw_authority
    except ValueError:
        return False
    return policy.host_allowed(authority)


def build_middlewares(policy: SecurityPolicy, requests: Counter) -> list[Middleware]:
    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            requests.labels(request.method, route, str(status)).inc()

    @web.middleware
    async def translate_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: exc.headers[k] for k in KEPT_HEADERS if k in exc.headers}
            return error_response(exc.status, _message(request, exc), headers)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("web: unexpected error in %s %s", request.method, request.path)
            return error_response(500, "internal error (logged in training.log)")

    @web.middleware
    async def enforce_access(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not policy.host_allowed(request.headers.get("Host")) or not target_host_allowed(
            policy, request.raw_path
        ):
            raise ApiError(
                421,
                "this server does not answer to that Host name; open the panel as "
                "http://127.0.0.1:<port>/ or http://localhost:<port>/",
            )
        check = policy.check_token(request)
        if check is TokenCheck.MISSING:
            raise ApiError(
                401,
                "this panel needs its token: send 'Authorization: Bearer <token>' or open the "
                "URL with ?token=<token> printed when the run started",
                {"WWW-Authenticate": 'Bearer realm="vsr_async"'},
            )
        if check is TokenCheck.WRONG:
            raise ApiError(
                401,
                "invalid token",
                {"WWW-Authenticate": 'Bearer realm="vsr_async", error="invalid_token"'},
            )
        if not policy.origin_allowed(request):
            raise ApiError(403, "cross-site request refused (Origin does not match this server)")
        response = await handler(request)
        if check is TokenCheck.OK_FROM_QUERY:
            policy.remember_token(request, response)
        return response

    @web.middleware
    async def limit_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, length)
        if request.body_exists:
            await request.read()  # enforces client_max_size for chunked bodies too (413)
        return await handler(request)

    return [count_requests, translate_errors, enforce_access, limit_body]


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no framing, no sniffing, no referrer (URLs may carry the token)."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'",
    )
    if request.path.startswith("/api/") and "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-store"
