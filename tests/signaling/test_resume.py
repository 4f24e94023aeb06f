"""Resume: `seq` counts per device session across reconnects, and a socket that comes back gets
exactly what it missed (no loss, no duplicates), in order."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from calls.models import Participant, ParticipantState
from calls.services import call_start
from signaling.presence import redis_for_loop
from signaling.sessions import (
    REPLAY_FRAMES,
    close_pipeline,
    delivery_header,
    frame_text,
    session_forget,
    session_push,
)

from .test_signaling import CANDIDATE, in_call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def call(alice, bob):
    return call_start(caller=alice, callee=bob)


async def drain(sock) -> int:
    """Read what is waiting; returns the last seq seen."""
    last = 0
    while not await sock.nothing(0.2):
        last = (await sock.recv())["seq"]
    return last


async def test_a_resumed_session_gets_what_it_missed_once_and_in_order(connect, alice, bob, call):
    a, b = await in_call(connect, alice, bob, call)
    session = a.welcome["body"]["session"]
    last = await drain(a)
    await a.close()
    await b.recv_type("peer-reconnecting")

    # While alice is away, bob keeps signaling: it waits in alice's session.
    for i in range(5):
        await b.send(
            "candidate", call.id, {"candidate": {**CANDIDATE["candidate"], "sdpMid": str(i)}}
        )
    assert await b.nothing(0.3)  # no peer_not_present: a reconnecting peer is still there

    a2 = await connect(alice)
    assert a2.welcome["body"]["session"] != session
    await a2.send("resume", body={"session": session, "lastSeq": last})
    resumed = await a2.recv()
    assert resumed["type"] == "resumed" and "seq" not in resumed
    assert resumed["body"]["session"] == session and resumed["body"]["calls"] == [str(call.id)]
    replayed = [await a2.recv() for _ in range(resumed["body"]["replayed"])]
    candidates = [m for m in replayed if m["type"] == "candidate"]
    assert [m["body"]["candidate"]["sdpMid"] for m in candidates] == ["0", "1", "2", "3", "4"]
    seqs = [m["seq"] for m in replayed]
    assert seqs == list(range(last + 1, last + 1 + len(seqs)))  # no gap, no duplicate

    # The device is back in the call, and the numbering goes on.
    joined_again = (await b.recv_type("peer-joined"))["body"]
    assert joined_again.items() >= {"user": alice.pk, "session": session, "resumed": True}.items()
    p = await sync_to_async(Participant.objects.get)(call=call, user=alice)
    assert p.state == ParticipantState.JOINED and p.session == session
    await b.send("candidate", call.id, CANDIDATE)
    nxt = await a2.recv_type("candidate")
    assert nxt["seq"] == seqs[-1] + 1
    await a2.send("candidate", call.id, CANDIDATE)
    assert (await b.recv_type("candidate"))["body"]["from"] == alice.pk


async def test_resume_is_refused_for_other_peoples_and_unknown_sessions(
    connect, alice, bob, charlie, call
):
    a, b = await in_call(connect, alice, bob, call)
    c = await connect(charlie)
    await c.send("resume", body={"session": a.welcome["body"]["session"], "lastSeq": 0})
    assert (await c.error())["code"] == "resume_failed"
    c2 = await connect(charlie)
    await c2.send("resume", body={"session": "s-nothing", "lastSeq": 0})
    assert (await c2.error())["code"] == "resume_failed"
    await c2.send("resume", body={"session": 5, "lastSeq": "x"})
    assert (await c2.error())["code"] == "bad_body"
    # alice's session was not taken: her socket still gets her frames.
    await b.send("candidate", call.id, CANDIDATE)
    assert (await a.recv_type("candidate"))["body"]["from"] == bob.pk


async def test_a_session_too_far_behind_is_not_resumed(connect, alice, bob, call):
    a, b = await in_call(connect, alice, bob, call)
    session = a.welcome["body"]["session"]
    await a.close()
    redis = redis_for_loop()
    for _ in range(REPLAY_FRAMES + 5):
        await session_push(
            redis,
            session=session,
            text=frame_text("pong"),
            publish=delivery_header(session, "pong", None),
        )
    a2 = await connect(alice)
    await a2.send("resume", body={"session": session, "lastSeq": 1})
    assert (await a2.error())["code"] == "resume_failed"
    # The page carries on with its new session: it joins again.
    await a2.send("join", call.id, {"resume": True})
    assert (await a2.recv_type("joined"))["body"]["resumed"] is True


async def test_resume_only_first(connect, alice, bob, call):
    a, b = await in_call(connect, alice, bob, call)
    await a.send("resume", body={"session": a.welcome["body"]["session"], "lastSeq": 0})
    assert (await a.error())["code"] == "resume_failed"


async def test_frames_pushed_during_a_resume_come_after_resumed(connect, alice, bob, call):
    """Peers keep sending while a session is being resumed: none of it may reach the page
    before `resumed` (the page would take the replayed session's frames for new ones), and
    everything comes once, in order, after it."""
    import asyncio

    a, b = await in_call(connect, alice, bob, call)
    session = a.session
    last = await drain(a)
    await a.close()
    await b.recv_type("peer-reconnecting")

    a2 = await connect(alice)

    async def keep_sending() -> None:
        for i in range(40):
            await b.send("candidate", call.id, {**CANDIDATE, "to": session}, id=f"b{i}")
            await asyncio.sleep(0.002)

    sender = asyncio.create_task(keep_sending())
    await a2.send("resume", body={"session": session, "lastSeq": last})
    first = await a2.recv()
    assert first["type"] == "resumed", first
    await sender
    seqs, candidates = [], 0
    while not await a2.nothing(0.5):
        msg = await a2.recv()
        seqs.append(msg["seq"])
        candidates += msg["type"] == "candidate"
    assert candidates == 40
    assert seqs == list(range(last + 1, last + 1 + len(seqs)))  # no gap, no duplicate


async def test_a_session_resumed_while_its_old_socket_is_open_moves_whole(
    connect, alice, bob, call
):
    """The page lost sight of its socket, but the server had not noticed yet: the session moves
    to the new socket, the old one is closed as stale (4409), and the peer's frames reach the
    new one, numbered on from what the page had, each once."""
    a, b = await in_call(connect, alice, bob, call)
    session = a.session
    last = await drain(a)
    a2 = await connect(alice)
    await a2.send("resume", body={"session": session, "lastSeq": last})
    resumed = await a2.recv_type("resumed")
    assert resumed["body"]["calls"] == [str(call.id)]
    closed = await a.c.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 4409}

    for i in range(5):
        await b.send("candidate", call.id, {**CANDIDATE, "to": session}, id=f"b{i}")
    got = [await a2.recv_type("candidate") for _ in range(5)]
    assert [m["seq"] for m in got] == sorted({m["seq"] for m in got})
    assert got[0]["seq"] > last
    assert await a2.nothing()


async def test_a_socket_that_cant_start_its_session_is_told_to_come_back_later(connect, alice):
    """Without a device session nobody can reach the page: while Redis is unreachable the socket
    is closed with 4503, and the page reconnects with its back-off."""
    import asyncio

    import redis.asyncio as aioredis

    from signaling import presence
    from tests.conftest import free_port

    loop = asyncio.get_running_loop()
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    real = presence._clients.get(loop)
    presence._clients[loop] = dead
    try:
        assert await connect(alice) is None
        assert connect.last_close == 4503
    finally:
        if real is None:
            presence._clients.pop(loop, None)
        else:
            presence._clients[loop] = real
        await close_pipeline(dead)
        await dead.aclose()
    assert (await connect(alice)).session  # Redis is back: a session, as usual


async def test_a_socket_whose_session_redis_lost_is_told_to_come_back(connect, alice):
    """A Redis that restarted empty has lost the session: its socket is closed with 4503 at
    the next frame's store, and the page reconnects and joins again (it can't be reached)."""
    a = await connect(alice)
    await session_forget(redis_for_loop(), session=a.session)
    await a.send("ping")
    assert (await a.recv_type("pong"))["seq"] == 2  # sent first, kept behind the send
    closed = await a.c.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4503}
