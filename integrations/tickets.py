"""Join tickets and device tokens: how an integrator's end user gets onto a signaling socket
without a Traverse session (a cross-site iframe gets no SameSite=Lax cookie).

- A **ticket** is minted by the integrator's server (POST /api/v1/tickets/) and handed to its
  page. It is signed (django.core.signing, its own salt), short-lived (TICKET_TTL_SECONDS) and
  single-use (its id is claimed in the cache when redeemed).
- The socket that redeems it (`/ws/signal/?ticket=…`) gets a **device token** in its welcome:
  signed, reusable for DEVICE_TOKEN_HOURS, for the page's reconnects and resumes
  (`/ws/signal/?device=…`).
Both name the user and the integrator; a user deleted or closed since, or moved to another
integrator, is refused.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.cache import cache
from django.utils import timezone

TICKET_SALT = "traverse.integrations.ticket"
DEVICE_SALT = "traverse.integrations.device"


class TicketError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Admitted:
    user: object
    integrator_id: int
    call_id: str | None
    device_token: str


def ticket_mint(*, user, call_id: str | None = None) -> tuple[str, datetime]:
    """A ticket for the integrator's `user` (optionally for one call). Returns (ticket, expiry)."""
    ttl = settings.TICKET_TTL_SECONDS
    payload = {
        "u": user.pk,
        "i": user.integrator_id,
        "c": str(call_id) if call_id else None,
        "j": secrets.token_urlsafe(12),
    }
    return signing.dumps(payload, salt=TICKET_SALT), timezone.now() + timedelta(seconds=ttl)


def _user(payload: dict):
    user_id, integrator_id = payload.get("u"), payload.get("i")
    if not isinstance(user_id, int) or not isinstance(integrator_id, int):
        raise TicketError("ticket_invalid", "This ticket is not valid.")
    user = (
        get_user_model()
        .objects.filter(pk=user_id, integrator_id=integrator_id, is_active=True)
        .exclude(integrator=None)
        .first()
    )
    if user is None:
        raise TicketError("ticket_invalid", "This person no longer exists.")
    return user


def _signed(token: str, *, salt: str, max_age: int, expired: tuple[str, str], what: str) -> dict:
    """A signed dict (django.core.signing) within its age; TicketError otherwise."""
    try:
        payload = signing.loads(token[:2000], salt=salt, max_age=max_age)
    except signing.SignatureExpired:
        raise TicketError(*expired) from None
    except signing.BadSignature:
        raise TicketError("ticket_invalid", f"This {what} is not valid.") from None
    if not isinstance(payload, dict):
        raise TicketError("ticket_invalid", f"This {what} is not valid.")
    return payload


def _ticket_payload(ticket: str) -> dict:
    return _signed(
        ticket,
        salt=TICKET_SALT,
        max_age=settings.TICKET_TTL_SECONDS,
        expired=("ticket_expired", "This ticket has expired: ask for a new one."),
        what="ticket",
    )


def ticket_peek(ticket: str):
    """The user and call a ticket names, while it is valid, without using it up (the embed page
    renders for it; the page's socket redeems it). TicketError when it is not valid."""
    payload = _ticket_payload(ticket)
    return _user(payload), payload.get("c")


def device_token_for(user) -> str:
    return signing.dumps({"u": user.pk, "i": user.integrator_id}, salt=DEVICE_SALT)


def ticket_redeem(ticket: str, *, origin_ok=lambda integrator_id: True) -> Admitted:
    """The user a ticket admits, once. TicketError: bad, expired, already used, or presented
    from an origin the integrator doesn't allow (`origin_ok`, checked before the ticket is
    used up)."""
    payload = _ticket_payload(ticket)
    if not isinstance(payload.get("j"), str):
        raise TicketError("ticket_invalid", "This ticket is not valid.")
    user = _user(payload)
    if not origin_ok(user.integrator_id):
        raise TicketError("origin_refused", "This page's origin may not use this ticket.")
    # Claimed after the checks above, so a ticket for a deleted user can't burn a slot; the
    # claim outlives the ticket's validity.
    if not cache.add(f"tickets:used:{payload['j']}", 1, timeout=settings.TICKET_TTL_SECONDS + 60):
        raise TicketError("ticket_used", "This ticket was used already: tickets are single-use.")
    return Admitted(
        user=user,
        integrator_id=user.integrator_id,
        call_id=payload.get("c"),
        device_token=device_token_for(user),
    )


def device_token_user(token: str, *, origin_ok=lambda integrator_id: True):
    """The user a device token names, while it is valid and they are, from an allowed origin."""
    payload = _signed(
        token,
        salt=DEVICE_SALT,
        max_age=int(settings.DEVICE_TOKEN_HOURS * 3600),
        expired=("device_expired", "This device's token has expired: open the call again."),
        what="device token",
    )
    user = _user(payload)
    if not origin_ok(user.integrator_id):
        raise TicketError("origin_refused", "This page's origin may not use this token.")
    return user
