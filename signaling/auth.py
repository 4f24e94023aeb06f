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
from urllib.parse import parse_qs

from channels.sessions import CookieMiddleware
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser

from config.middleware import OUTAGES

from .broadcast import in_db_pool
from .origins import carries_ticket, origin_allowed, origin_in


def _admit(scope, ticket: str, device: str) -> tuple[object, dict]:
    """The integrator's end user a ticket or device token admits, and what the welcome tells
    the page (its device token, the ticket's call); TicketError when refused."""
    from integrations.models import Integrator
    from integrations.tickets import device_token_for, device_token_user, ticket_redeem

    def origin_ok(integrator_id: int) -> bool:
        if origin_allowed(scope):
            return True  # the embed page, on this site
        origins = Integrator.objects.filter(pk=integrator_id).values_list(
            "allowed_origins", flat=True
        )
        return any(origin_in(scope, list(o or [])) for o in origins)

    if ticket:
        admitted = ticket_redeem(ticket, origin_ok=origin_ok)
        return admitted.user, {"deviceToken": admitted.device_token, "call": admitted.call_id}
    user = device_token_user(device, origin_ok=origin_ok)
    return user, {"deviceToken": device_token_for(user), "call": None}


def _user_for(session):
    """The session's user (AnonymousUser when signed out or expired), as Django's own request
    auth finds it: the backend, and the session's hash against the user's password."""
    return auth.get_user(SimpleNamespace(session=session))


class _SocketSession:
    def __init__(self, inner):
        self.inner = inner
        self.store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope, receive, send):
        if carries_ticket(scope):
            return await self._with_ticket(scope, receive, send)
        session_key = scope["cookies"].get(settings.SESSION_COOKIE_NAME)
        scope = dict(scope, session=self.store(session_key))
        # In the consumers' database pool: Channels' get_user runs in the one shared database
        # thread, behind whatever else waits there.
        try:
            scope["user"] = await in_db_pool(_user_for)(scope["session"])
        except OUTAGES as exc:  # the consumer tells the page to come back later (4503)
            scope["user"], scope["outage"] = AnonymousUser(), exc
        return await self.inner(scope, receive, send)

    async def _with_ticket(self, scope, receive, send):
        """An integrator's end user, by ticket or device token (never by a cookie: a page of
        another site must not ride on this site's session)."""
        from integrations.tickets import TicketError

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        ticket = (query.get("ticket") or [""])[0]
        device = (query.get("device") or [""])[0]
        scope = dict(scope, session=self.store(None))
        try:
            scope["user"], scope["admitted"] = await in_db_pool(_admit)(scope, ticket, device)
        except TicketError as exc:
            scope["user"] = AnonymousUser()
            scope["auth_error"] = {"code": exc.code, "message": str(exc)}
        except OUTAGES as exc:
            scope["user"], scope["outage"] = AnonymousUser(), exc
        return await self.inner(scope, receive, send)


def SocketAuthMiddleware(inner):  # noqa: N802 (an ASGI middleware stack, as Channels names them)
    """scope["cookies"], scope["session"] and scope["user"] (never lazy) for WebSocket apps."""
    return CookieMiddleware(_SocketSession(inner))
