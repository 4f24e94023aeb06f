"""Idle signaling sockets stay up for minutes, on a Redis server over TCP and on the embedded one.

The regression this guards: redis-py 8 reads with a 5 s socket timeout by default while
channels-redis blocks in BZPOPMIN for 5 s, so every quiet consumer died with 1011 after 5-6 s.
Every other test exchanges a message within a second or two and never saw it. The smoke mark runs
this on the embedded Redis (a unix socket) too; the full pass runs it on the Redis server.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from calls.services import call_start

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.smoke]

IDLE_SECONDS = float(os.environ.get("SIGNALING_IDLE_TEST_SECONDS", "60"))
OFFER = {"description": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}


async def test_idle_sockets_outlive_the_redis_read_timeout(connect, alice, bob):
    """Measured before the fix: the listening sockets closed after 5.1-5.9 s with 1011
    (redis.exceptions.TimeoutError in the consumer's channel receive)."""
    # (signaling.E001 refuses REDIS_SOCKET_TIMEOUT <= CHANNEL_LAYER_BLOCK_SECONDS at start-up.)
    call = await asyncio.to_thread(call_start, caller=alice, callee=bob)
    a = await connect(alice)
    b = await connect(bob)
    listeners = [await connect(alice, path="/ws/signal/?ice=0") for _ in range(3)]
    await a.send("join", call.id)
    await a.recv_type("joined")
    await b.send("join", call.id)
    await b.recv_type("joined")
    await a.recv_type("peer-joined")

    # Nothing at all for a minute: no ping, no message in either direction.
    for sock in [a, b, *listeners]:
        while not await sock.nothing(timeout=0.3):
            await sock.recv()  # what the join announced (answered, peer-joined)
    await asyncio.sleep(IDLE_SECONDS)

    # Every socket is still open and its consumer still reads its channel.
    for sock in [a, b, *listeners]:
        output = sock.c.output_queue
        closes = [m for m in list(output._queue) if m.get("type") == "websocket.close"]  # type: ignore[attr-defined]
        assert closes == [], f"a socket closed while idle: {closes}"
        assert not sock.c.future.done(), "a consumer died while idle"
        await sock.send("ping")
        assert (await sock.recv_type("pong"))["type"] == "pong"
    await a.send("offer", call.id, OFFER)
    got = await b.recv_type("offer")
    assert got["body"]["description"] == OFFER["description"]
