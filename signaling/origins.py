"""WebSocket Origin check by scheme, host and port.

Channels' AllowedHostsOriginValidator compares only the Origin's host with ALLOWED_HOSTS, so a
page at `http://127.0.0.1:9999` (any other program on the machine) could open a signed-in
socket to the server at `http://127.0.0.1:8000`. Browsers send cookies with cross-origin
WebSocket handshakes, so this check is what stands between another site and the user's calls.
Allowed: the site's own origin (the Host header with the request's scheme, the proxy's
X-Forwarded-Proto counted when SECURE_PROXY_SSL_HEADER is set) and DJANGO_CSRF_TRUSTED_ORIGINS
(`https://*.example.com` covers subdomains, as for CSRF).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def request_scheme(scope) -> str:
    if scope.get("scheme") in ("wss", "https"):
        return "https"
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        header = proxy[0].removeprefix("HTTP_").replace("_", "-").lower().encode()
        if _header(scope, header).split(",")[0].strip() == proxy[1]:
            return "https"
    return "http"


def origin_allowed(scope) -> bool:
    origin = _origin_tuple(_header(scope, b"origin"))
    if origin is None:
        return False
    host = _header(scope, b"host")
    if host and validate_host(host.rsplit(":", 1)[0].strip("[]"), settings.ALLOWED_HOSTS):
        own = _origin_tuple(f"{request_scheme(scope)}://{host}")
        if own == origin:
            return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        scheme, _, rest = trusted.partition("://")
        if rest.startswith("*."):
            want = _origin_tuple(f"{scheme}://{rest[2:]}")
            if want and origin[0] == want[0] and origin[2] == want[2]:
                if origin[1].endswith("." + want[1]):
                    return True
        elif _origin_tuple(trusted) == origin:
            return True
    return False


def origin_in(scope, origins: list[str]) -> bool:
    """The handshake's Origin is one of `origins` (an integrator's allowed origins)."""
    origin = _origin_tuple(_header(scope, b"origin"))
    return origin is not None and any(_origin_tuple(o) == origin for o in origins)


def carries_ticket(scope) -> bool:
    """A socket that brings a join ticket or a device token (integrations.tickets): its origin
    is checked against its integrator's allowed origins, once the ticket says who that is."""
    query = scope.get("query_string", b"")
    return b"ticket=" in query or b"device=" in query


class SameOriginValidator:
    """ASGI middleware: refuse WebSocket handshakes from any other origin (403). Ticket and
    device-token sockets pass here; signaling.auth checks their origin against their
    integrator's."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not carries_ticket(scope):
            if not origin_allowed(scope):
                return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
