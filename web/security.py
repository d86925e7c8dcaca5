"""Who may talk to the panel: bearer token, Host allow-list (DNS rebinding) and same-origin writes.

Rules (DESIGN §7):
- A token is required on every route when the bind address is not loopback, and also whenever
  WEB_TOKEN is set. Without WEB_TOKEN on a non-loopback bind, one is generated with `secrets`
  and printed once at start.
- Where the token may come from: `Authorization: Bearer <token>` on any method; on GET/HEAD only
  (things a browser loads without script: the page, EventSource, <img>, download links) also the
  `token` query parameter or the `vsr_token_<port>` cookie. The cookie is set (HttpOnly,
  SameSite=Strict) when a GET authenticates with `?token=`, so a reload of the panel works after
  the page has removed the token from its address bar. Writes (POST/PATCH) need the header.
- The `Host` header must name this server: for a loopback bind 127.0.0.1, localhost or ::1 (any
  port, so `ssh -L 8080:127.0.0.1:5050` works); for other binds also the bind address, this
  machine's host names, or any IP literal. A foreign name (a rebinding attack's DNS name) → 421.
- Unsafe methods with an `Origin` other than this server's own (`http(s)://<Host>`), the opaque
  origin `null`, or `Sec-Fetch-Site: cross-site` → 403. Requests without `Origin` (curl, scripts)
  are not browsers' cross-site requests and pass.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from enum import Enum

from aiohttp import web
from yarl import URL

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::", ""})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_QUERY = "token"
COOKIE_PREFIX = "vsr_token_"


class TokenCheck(Enum):
    NOT_REQUIRED = "not required"
    OK = "ok"
    OK_FROM_QUERY = "ok (query parameter)"
    MISSING = "missing"
    WRONG = "wrong"


def is_loopback(host: str) -> bool:
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def split_host(host_header: str) -> tuple[str, int | None] | None:
    """`Host` header → (lowercase name, no brackets or trailing dot; port), None if malformed."""
    try:
        url = URL(f"http://{host_header}")
        name, port = url.raw_host, url.explicit_port
    except ValueError:
        return None
    if not name or url.raw_path not in ("", "/") or url.user or url.query_string:
        return None
    return name.lower().rstrip("."), port


def machine_names() -> set[str]:
    names = set()
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower().rstrip("."))
            names.add(name.lower().split(".")[0])
    return names


@dataclass(frozen=True)
class SecurityPolicy:
    """The panel's access rules, fixed at start."""

    bind_host: str
    token: str | None  # None: no token needed (loopback bind, WEB_TOKEN empty)
    token_generated: bool
    allowed_hosts: frozenset[str]
    allow_ip_literals: bool

    @classmethod
    def from_config(cls, config: object) -> SecurityPolicy:
        host = str(getattr(config, "WEB_HOST", "127.0.0.1")).strip()
        configured = str(getattr(config, "WEB_TOKEN", "") or "")
        loopback = is_loopback(host)
        token, generated = configured or None, False
        if token is None and not loopback:
            token, generated = secrets.token_urlsafe(24), True
        allowed = set(LOOPBACK_NAMES)
        bind_name = host.strip("[]").lower().rstrip(".")
        if bind_name not in UNSPECIFIED_HOSTS:
            allowed.add(bind_name)
        if not loopback:
            allowed |= machine_names()
        return cls(
            bind_host=host,
            token=token,
            token_generated=generated,
            allowed_hosts=frozenset(allowed),
            allow_ip_literals=not loopback,
        )

    @property
    def token_required(self) -> bool:
        return self.token is not None

    # --- Host (DNS rebinding) -------------------------------------------------------------

    def host_allowed(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        parts = split_host(host_header)
        if parts is None:
            return False
        name, _ = parts
        return name in self.allowed_hosts or (self.allow_ip_literals and is_ip_literal(name))

    # --- Origin (cross-site writes) -------------------------------------------------------

    def origin_allowed(self, request: web.BaseRequest) -> bool:
        if request.method in SAFE_METHODS:
            return True
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return False
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        try:
            url = URL(origin)
        except ValueError:
            return False
        host = request.headers.get("Host", "")
        if url.scheme not in ("http", "https") or not url.raw_host:
            return False  # includes the opaque origin "null"
        return url.raw_authority.lower() == host.lower()

    # --- token ----------------------------------------------------------------------------

    def cookie_name(self, request: web.BaseRequest) -> str:
        parts = split_host(request.headers.get("Host", ""))
        port = parts[1] if parts and parts[1] is not None else 80
        return f"{COOKIE_PREFIX}{port}"

    def check_token(self, request: web.BaseRequest) -> TokenCheck:
        if self.token is None:
            return TokenCheck.NOT_REQUIRED
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer":
                return TokenCheck.WRONG
            return TokenCheck.OK if self._matches(value.strip()) else TokenCheck.WRONG
        if request.method not in ("GET", "HEAD"):
            return TokenCheck.MISSING
        query = request.query.get(TOKEN_QUERY)
        if query is not None:
            return TokenCheck.OK_FROM_QUERY if self._matches(query) else TokenCheck.WRONG
        cookie = request.cookies.get(self.cookie_name(request))
        if cookie is not None and self._matches(cookie):
            return TokenCheck.OK
        return TokenCheck.MISSING

    def _matches(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    def remember_token(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """After `?token=` worked: a session cookie, so reloads and static files work too."""
        if self.token is None or response.prepared:
            return
        response.set_cookie(
            self.cookie_name(request),
            self.token,
            httponly=True,
            samesite="Strict",
            path="/",
        )
