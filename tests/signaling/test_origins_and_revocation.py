"""Who may hold a signaling socket: the site's own origin only (scheme, host and port), and
only while signed in with an active account."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.smoke
@pytest.mark.parametrize(
    "origin",
    [
        b"http://127.0.0.1:9999",  # another program on this machine (measured: was accepted)
        b"https://127.0.0.1",  # another scheme
        b"http://evil.example",
        b"http://127.0.0.1.evil.example",
        b"null",
        b"",
    ],
)
async def test_other_origins_are_refused(connect, alice, origin):
    assert await connect(alice, origin=origin) is None


async def test_the_sites_own_origin_is_accepted(connect, alice):
    assert await connect(alice, origin=b"http://127.0.0.1") is not None
    assert await connect(alice, origin=b"http://127.0.0.1:80") is not None


async def test_trusted_origins_are_accepted(connect, alice, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com", "https://*.partner.example"]
    assert await connect(alice, origin=b"https://app.example.com") is not None
    assert await connect(alice, origin=b"https://eu.partner.example") is not None
    assert await connect(alice, origin=b"http://app.example.com") is None
    assert await connect(alice, origin=b"https://app.example.com:8443") is None


@pytest.mark.smoke
async def test_signing_out_closes_that_sessions_sockets(connect, alice, password):
    client = Client()
    await sync_to_async(client.login)(username="alice", password=password)
    key = client.cookies["sessionid"].value
    other = await connect(alice)  # another browser, another session

    from channels.testing import WebsocketCommunicator

    from config.asgi import application

    comm = WebsocketCommunicator(
        application,
        "/ws/signal/",
        headers=[
            (b"origin", b"http://127.0.0.1"),
            (b"host", b"127.0.0.1"),
            (b"cookie", f"sessionid={key}".encode()),
        ],
    )
    assert (await comm.connect(timeout=5))[0]
    try:
        await sync_to_async(client.post)("/accounts/logout/")
        seen = []
        while True:
            out = await comm.receive_output(timeout=3)
            seen.append(out)
            if out["type"] == "websocket.close":
                break
        assert out["code"] == 4401 and any('"signed_out"' in o.get("text", "") for o in seen)
        # The other session's socket is untouched.
        await other.send("ping")
        assert (await other.recv_type("pong"))["type"] == "pong"
    finally:
        await comm.disconnect()


@pytest.mark.smoke
async def test_deactivating_an_account_closes_all_its_sockets(connect, alice, bob):
    sockets = [await connect(alice), await connect(alice, path="/ws/signal/?ice=0")]
    bobs = await connect(bob)

    def deactivate() -> None:
        user = get_user_model().objects.get(pk=alice.pk)
        user.is_active = False
        user.save()

    await sync_to_async(deactivate)()
    for sock in sockets:
        assert (await sock.error())["code"] == "account_disabled"
        out = await sock.c.receive_output(timeout=3)
        assert out == {"type": "websocket.close", "code": 4403}
    # And a deactivated account can't open a new one.
    assert await connect(alice) is None
    await bobs.send("ping")
    assert (await bobs.recv_type("pong"))["type"] == "pong"
