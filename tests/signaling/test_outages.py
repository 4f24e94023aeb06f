"""Redis or the database away while sockets are open and opening, on a real server process (the
run command's Daphne): on a Redis of the test's own, which it stops and starts again, and on
PostgreSQL through a proxy it cuts.

Each socket hears what to do: "come back later" (close 4503, the page reconnects with its
back-off) or an `unavailable` error for the one frame that could not be handled (the socket
stays). The log has a line for each, and no traceback: a manual run found Daphne's "Exception
inside application" and a failed handshake (a 500, or nothing for 4 s) for every socket that
opened while Redis restarted, and 1011 for those that were open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
import websockets

from calls.services import call_start
from tests.conftest import database_proxy

from .conftest import session_cookie
from .test_two_processes import Daphne

pytestmark = [pytest.mark.django_db(transaction=True)]


async def open_socket(server: Daphne, cookie: str) -> websockets.ClientConnection:
    return await websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws/signal/?ice=0",
        additional_headers={
            "Origin": f"http://127.0.0.1:{server.port}",
            "Cookie": f"sessionid={cookie}",
        },
        ping_interval=None,
        open_timeout=10,
    )


async def next_frame(ws, timeout: float = 10) -> dict | int:
    """The socket's next frame, or its close code if it closes first."""
    try:
        async with asyncio.timeout(timeout):
            return json.loads(await ws.recv())
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else 1006


async def frame_of_type(ws, mtype: str) -> dict | int:
    while True:
        frame = await next_frame(ws)
        if isinstance(frame, int) or frame["type"] in (mtype, "error"):
            return frame


async def welcome_or_close(server: Daphne, cookie: str) -> dict | int:
    ws = await open_socket(server, cookie)
    frame = await next_frame(ws)
    with contextlib.suppress(websockets.ConnectionClosed):
        await ws.close()
    return frame


def assert_no_traceback(server: Daphne) -> str:
    log = server.log.read_text()
    assert "Traceback" not in log and "Exception inside application" not in log, log[-4000:]
    return log


def test_while_redis_is_away_sockets_are_told_to_come_back_and_then_do(web, alice, stats_redis):
    server, cookie = web(REDIS_URL=stats_redis.url), session_cookie(alice)

    async def scenario() -> None:
        ws = await open_socket(server, cookie)
        assert (await next_frame(ws))["type"] == "welcome"
        stats_redis.stop()
        assert await next_frame(ws, timeout=15) == 4503  # the open one: its layer went
        for _ in range(3):  # those that open meanwhile: accepted, then told
            assert await welcome_or_close(server, cookie) == 4503
        stats_redis.start()  # back, empty (nothing was saved)
        deadline = time.monotonic() + 20
        while (got := await welcome_or_close(server, cookie)) == 4503:
            assert time.monotonic() < deadline, "no welcome 20 s after Redis came back"
            await asyncio.sleep(0.5)
        assert got["type"] == "welcome", got

    asyncio.run(scenario())
    log = assert_no_traceback(server)
    assert log.count("told to come back later: Redis server unreachable") >= 3, log[-4000:]


def test_while_the_database_is_away_frames_get_unavailable_and_sockets_come_back(web, alice, bob):
    call = call_start(caller=alice, callee=bob)
    cookie = session_cookie(alice)
    with database_proxy() as (proxy, url):
        server = web(DATABASE_URL=url, DATABASE_POOL_TIMEOUT="3")

        async def scenario() -> None:
            ws = await open_socket(server, cookie)
            assert (await next_frame(ws))["type"] == "welcome"
            proxy.cut()
            await ws.send(json.dumps({"v": 1, "type": "join", "id": "j1", "call": str(call.id)}))
            error = await frame_of_type(ws, "joined")
            assert error["type"] == "error", error
            assert error["body"]["code"] == "unavailable" and error["ref"] == "j1", error
            assert "database" in error["body"]["message"]
            assert error["body"]["retryAfter"] == 5  # the same frame may work then
            await ws.send(json.dumps({"v": 1, "type": "ping", "id": "p1"}))
            assert (await frame_of_type(ws, "pong"))["type"] == "pong"  # the socket stays
            # One that opens meanwhile: who it is can't be read, so it comes back later.
            assert await welcome_or_close(server, cookie) == 4503
            proxy.restore()
            await ws.send(json.dumps({"v": 1, "type": "join", "id": "j2", "call": str(call.id)}))
            joined = await frame_of_type(ws, "joined")
            assert joined["type"] == "joined", joined
            assert (await welcome_or_close(server, cookie))["type"] == "welcome"
            await ws.close()

        asyncio.run(scenario())
    log = assert_no_traceback(server)
    assert "a join frame refused: database unreachable" in log, log[-4000:]
    assert "told to come back later: database unreachable" in log, log[-4000:]
    participant = call.participants.get(user=alice)
    assert participant.state == "joined"  # the join that went through is the one stored
