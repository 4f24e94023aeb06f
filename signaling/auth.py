"""Who is on a signaling socket: the Django session cookie, read once, at the handshake.

Channels' AuthMiddlewareStack does the same, and also wraps `send` for the life of the socket,
to save the session and set its cookie on HTTP responses: for every frame sent, it reads the
session's `modified` and `is_empty()` through lazy proxies (a few percent of the CPU of a
relayed frame, measured in issue 8). A WebSocket can't set a cookie and the consumer never
changes the session, so here the session and the user are resolved before the consumer starts,
and frames go straight to the server's `send`.
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace

from channels.sessions import CookieMiddleware
from django.conf import settings
from django.contrib import auth

from .broadcast import in_db_pool


def _user_for(session):
    """The session's user (AnonymousUser when signed out or expired), as Django's own request
    auth finds it: the backend, and the session's hash against the user's password."""
    return auth.get_user(SimpleNamespace(session=session))


class _SocketSession:
    def __init__(self, inner):
        self.inner = inner
        self.store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope, receive, send):
        session_key = scope["cookies"].get(settings.SESSION_COOKIE_NAME)
        scope = dict(scope, session=self.store(session_key))
        # In the consumers' database pool: Channels' get_user runs in the one shared database
        # thread, behind whatever else waits there.
        scope["user"] = await in_db_pool(_user_for)(scope["session"])
        return await self.inner(scope, receive, send)


def SocketAuthMiddleware(inner):  # noqa: N802 (an ASGI middleware stack, as Channels names them)
    """scope["cookies"], scope["session"] and scope["user"] (never lazy) for WebSocket apps."""
    return CookieMiddleware(_SocketSession(inner))
