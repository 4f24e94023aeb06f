"""Join tickets on the signaling socket: an integrator's end user comes in with a ticket,
once, from the integrator's allowed origins, and reconnects with the device token its welcome
gives; everything else is refused with a specific error."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from config.asgi import application
from integrations.models import Integrator
from tests.integrations.test_api_keys import bearer, make_key
from tests.signaling.conftest import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)
OWN = b"http://127.0.0.1"
APP = "https://app.acme.example"


def _setup(client):
    key = make_key("users:write")
    Integrator.objects.filter(slug="acme").update(allowed_origins=[APP])
    for ext, name in (("u-1", "One"), ("u-2", "Two")):
        client.post(
            "/api/v1/users/",
            {"externalId": ext, "displayName": name},
            content_type="application/json",
            **bearer(key),
        )
    return key


def _ticket(client, key, user="u-1", **extra):
    response = client.post(
        "/api/v1/tickets/", {"user": user, **extra}, content_type="application/json", **bearer(key)
    )
    return response


async def open_socket(query: str, origin: bytes = OWN, cookie: str | None = None):
    """(welcome or None, error body or None, close code or None)."""
    headers = [(b"origin", origin), (b"host", b"127.0.0.1")]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    c = WebsocketCommunicator(application, f"/ws/signal/?{query}", headers=headers)
    connected, code = await c.connect(timeout=5)
    if not connected:
        return None, None, code, c
    first = await c.receive_output(timeout=5)
    if first["type"] == "websocket.close":
        return None, None, first.get("code"), c
    frame = json.loads(first["text"])
    if frame["type"] == "welcome":
        return frame, None, None, c
    closing = await c.receive_output(timeout=5)
    return None, frame["body"], closing.get("code"), c


async def _close(c):
    if not c.future.done():
        await c.disconnect()


async def test_a_ticket_admits_once_and_the_device_token_reconnects(client):
    key = await sync_to_async(_setup)(client)
    ticket = (await sync_to_async(_ticket)(client, key)).json()["ticket"]
    welcome, _, _, c = await open_socket(f"ticket={ticket}", origin=APP.encode())
    assert welcome["body"]["user"]["name"] == "One" and "ice" in welcome["body"]
    token = welcome["body"]["deviceToken"]
    await _close(c)
    # Single-use: the same ticket again is refused, with the reason.
    welcome, error, code, c = await open_socket(f"ticket={ticket}", origin=APP.encode())
    assert welcome is None and code == 4401 and error["code"] == "ticket_used"
    await _close(c)
    # The device token brings the page back (reconnects, resumes), as often as it needs.
    for _ in range(2):
        welcome, _, _, c = await open_socket(f"device={token}", origin=APP.encode())
        assert welcome["body"]["user"]["name"] == "One"
        await _close(c)


async def test_a_ticket_from_another_origin_is_refused_and_not_used_up(client):
    key = await sync_to_async(_setup)(client)
    ticket = (await sync_to_async(_ticket)(client, key)).json()["ticket"]
    welcome, error, code, c = await open_socket(f"ticket={ticket}", origin=b"https://evil.example")
    assert welcome is None and code == 4401 and error["code"] == "origin_refused"
    await _close(c)
    welcome, _, _, c = await open_socket(f"ticket={ticket}", origin=OWN)  # the embed page
    assert welcome is not None
    token = welcome["body"]["deviceToken"]
    await _close(c)
    welcome, error, _, c = await open_socket(f"device={token}", origin=b"https://evil.example")
    assert welcome is None and error["code"] == "origin_refused"
    await _close(c)


async def test_expired_forged_and_orphaned_tickets_are_refused(client, settings, alice):
    key = await sync_to_async(_setup)(client)
    ticket = (await sync_to_async(_ticket)(client, key)).json()["ticket"]
    for bad, code in [
        (ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB"), "ticket_invalid"),
        ("nonsense", "ticket_invalid"),
        ("", None),
    ]:
        welcome, error, closed, c = await open_socket(f"ticket={bad}")
        assert welcome is None and closed == 4401
        if code:
            assert error["code"] == code
        await _close(c)
    # Expired: past TICKET_TTL_SECONDS.
    settings.TICKET_TTL_SECONDS = 1
    late = (await sync_to_async(_ticket)(client, key)).json()["ticket"]
    await asyncio.sleep(2.1)
    _, error, _, c = await open_socket(f"ticket={late}")
    assert error["code"] == "ticket_expired"
    await _close(c)
    # A user deleted since the ticket was minted.
    settings.TICKET_TTL_SECONDS = 60
    orphan = (await sync_to_async(_ticket)(client, key, user="u-2")).json()["ticket"]
    await sync_to_async(client.delete)("/api/v1/users/u-2/", **bearer(key))
    _, error, _, c = await open_socket(f"ticket={orphan}")
    assert error["code"] == "ticket_invalid"
    await _close(c)
    # A site user's session cookie never stands in for a ticket that failed.
    cookie = await sync_to_async(session_cookie)(alice)
    welcome, error, _, c = await open_socket("ticket=nonsense", cookie=cookie)
    assert welcome is None and error["code"] == "ticket_invalid"
    await _close(c)


async def test_tickets_are_minted_only_for_your_users_and_their_calls(client):
    from calls.services import call_start

    key = await sync_to_async(_setup)(client)
    other = await sync_to_async(make_key)("users:write", integrator="globex", name="g")
    assert (await sync_to_async(_ticket)(client, other, user="u-1")).status_code == 404
    assert (await sync_to_async(_ticket)(client, key, user="nobody")).status_code == 404
    User = get_user_model()
    one = await sync_to_async(User.objects.get)(external_id="u-1")
    two = await sync_to_async(User.objects.get)(external_id="u-2")
    call = await sync_to_async(call_start)(caller=one, callee=two)
    assert (
        await sync_to_async(_ticket)(client, key, user="u-1", call=str(call.id))
    ).status_code == 201
    stranger = "00000000-0000-0000-0000-000000000000"
    assert (await sync_to_async(_ticket)(client, key, user="u-1", call=stranger)).status_code == 404
    minted = (await sync_to_async(_ticket)(client, key, user="u-2", call=str(call.id))).json()
    welcome, _, _, c = await open_socket(f"ticket={minted['ticket']}")
    assert welcome["body"]["ticketCall"] == str(call.id)
    assert [r["call"] for r in welcome["body"]["ringing"]] == [str(call.id)]
    await _close(c)
