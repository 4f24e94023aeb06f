"""A signaling drop never ends a call at once: a grace window, resume, expiry, ring timeout,
and dead devices found through per-process presence."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from calls.models import Call, CallState, Participant, ParticipantState
from calls.services import call_start, calls_expire, participants_disconnect_node
from signaling.broadcast import _collected, _deliver, in_db_pool
from signaling.presence import NODES_KEY, _by_loop, heartbeat_key, node_of, sockets_key
from signaling.services import presence_reap_dead_nodes

from .test_resume import drain
from .test_signaling import in_call, step_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def call(alice, bob):
    return call_start(caller=alice, callee=bob)


def participant(call, user) -> Participant:
    return Participant.objects.get(call=call, user=user)


@pytest.mark.smoke
async def test_a_dropped_socket_is_reconnecting_not_gone(connect, alice, bob, call):
    a, b = await in_call(connect, alice, bob, call)
    await b.close()
    msg = await a.recv_type("peer-reconnecting")
    assert msg["body"] == {
        "user": bob.pk,
        "graceSeconds": settings.SIGNALING_GRACE_SECONDS,
        "step": await step_of(call, "reconnecting", bob),
    }
    p = await sync_to_async(participant)(call, bob)
    assert p.state == ParticipantState.RECONNECTING and p.left_at is None
    assert p.reconnecting_since is not None
    assert (await sync_to_async(Call.objects.get)(pk=call.pk)).state == CallState.CONNECTING
    assert await a.nothing(0.3)  # no peer-left, no hangup


@pytest.mark.smoke
async def test_coming_back_resumes_without_rewriting_the_call(connect, alice, bob, call):
    a, b = await in_call(connect, alice, bob, call)
    await sync_to_async(
        lambda: Participant.objects.filter(call=call, user=bob).update(connection_type="relay")
    )()
    before = await sync_to_async(participant)(call, bob)
    await b.close()
    await a.recv_type("peer-reconnecting")

    b2 = await connect(bob)
    await b2.send("join", call.id, {"resume": True})
    joined = await b2.recv_type("joined")
    assert joined["body"]["resumed"] is True
    assert [p["username"] for p in joined["body"]["peers"]] == ["alice"]
    back = await a.recv_type("peer-joined")
    assert back["body"].items() >= {"user": bob.pk, "session": b2.session, "resumed": True}.items()
    after = await sync_to_async(participant)(call, bob)
    assert after.state == ParticipantState.JOINED and after.reconnecting_since is None
    assert after.joined_at == before.joined_at and after.connection_type == "relay"
    # ... and it signals again on the new socket.
    await b2.send("candidate", call.id, {"candidate": None})
    assert (await a.recv_type("candidate"))["body"]["from"] == bob.pk


async def test_a_fresh_join_after_a_reload_is_not_a_resume(connect, alice, bob, call):
    a, b = await in_call(connect, alice, bob, call)
    await b.close()
    await a.recv_type("peer-reconnecting")
    b2 = await connect(bob)
    await b2.send("join", call.id)  # a reloaded page has no peer connection to keep
    assert (await b2.recv_type("joined"))["body"]["resumed"] is False
    assert (await a.recv_type("peer-joined"))["body"]["resumed"] is False


@pytest.mark.smoke
async def test_when_the_grace_window_runs_out_the_device_leaves_and_the_call_ends(
    connect, alice, bob, call
):
    a, b = await in_call(connect, alice, bob, call)
    await b.close()
    await a.recv_type("peer-reconnecting")
    # Within the window: nothing happens.
    assert (await sync_to_async(calls_expire)())["left"] == 0
    later = timezone.now() + timedelta(seconds=settings.SIGNALING_GRACE_SECONDS + 1)
    assert (await sync_to_async(calls_expire)(now=later))["left"] == 1
    assert (await a.recv_type("peer-left"))["body"]["user"] == bob.pk
    ended = await a.recv_type("hangup")
    assert ended["body"] == {"by": None, "reason": "connection_lost"}
    c = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert c.state == CallState.ENDED and c.end_reason == "connection_lost"
    p = await sync_to_async(participant)(call, bob)
    assert p.state == ParticipantState.LEFT and p.left_at == p.left_at and p.left_at is not None
    # A second reaper finds nothing left to do.
    assert (await sync_to_async(calls_expire)(now=later)) == {
        "left": 0,
        "no_answer": 0,
        "invites_unanswered": 0,
    }


@pytest.mark.smoke
async def test_unanswered_calls_stop_ringing(connect, alice, bob, call):
    b = await connect(bob, path="/ws/signal/?ice=0")
    a = await connect(alice)
    await a.send("join", call.id)
    await a.recv_type("joined")
    assert (await sync_to_async(calls_expire)())["no_answer"] == 0
    later = timezone.now() + timedelta(seconds=settings.CALL_RING_TIMEOUT + 1)
    assert (await sync_to_async(calls_expire)(now=later))["no_answer"] == 1
    for sock in (a, b):
        msg = await sock.recv_type("hangup")
        assert msg["call"] == str(call.id) and msg["body"]["reason"] == "no_answer"
    c = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert c.state == CallState.ENDED and c.end_reason == "no_answer" and c.answered_at is None


async def test_a_caller_who_vanishes_while_ringing_cancels_the_call(connect, alice, bob, call):
    b = await connect(bob, path="/ws/signal/?ice=0")
    a = await connect(alice)
    await a.send("join", call.id)
    await a.recv_type("joined")
    await a.close()
    later = timezone.now() + timedelta(seconds=settings.SIGNALING_GRACE_SECONDS + 1)
    await sync_to_async(calls_expire)(now=later)
    assert (await b.recv_type("hangup"))["body"]["reason"] == "cancelled"


async def test_a_consumer_that_dies_still_starts_the_grace_window(connect, alice, bob, call):
    """The consumer crashes (here: an event it has no handler for, as when its channel-layer
    read raises): disconnect() is never called, yet the participant becomes reconnecting and the
    peer is told."""
    from channels.layers import get_channel_layer

    a, b = await in_call(connect, alice, bob, call)
    bobs_channel = (await sync_to_async(participant)(call, bob)).channel_name
    await get_channel_layer().send(bobs_channel, {"type": "no.such.handler"})
    with pytest.raises(ValueError, match="No handler"):
        await asyncio.wait_for(b.c.future, 5)
    assert (await a.recv_type("peer-reconnecting"))["body"]["user"] == bob.pk
    p = await sync_to_async(participant)(call, bob)
    assert p.state == ParticipantState.RECONNECTING


async def test_a_killed_consumer_is_left_to_presence(connect, alice, bob, call):
    """A consumer cancelled (the server shutting down) records nothing itself: its event loop is
    going away. Its process stops beating, and presence starts the grace window instead."""
    a, b = await in_call(connect, alice, bob, call)
    b.c.future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b.c.future
    p = await sync_to_async(participant)(call, bob)
    assert p.state == ParticipantState.JOINED  # until the reaper sees the process is gone
    await a.send("ping")
    assert (await a.recv_type("pong"))["type"] == "pong"


@pytest.mark.smoke
async def test_sockets_of_a_dead_process_start_their_grace_window(alice, bob, call):
    """A process killed with SIGKILL runs no clean-up at all. Its heartbeat expires, and the
    next look (the reaper, or another process starting) finds its sockets. A live process's
    sockets are left alone."""
    r = redis.Redis.from_url(settings.REDIS_URL)
    dead, live = "specific.deadbeef00", "specific.alive00000"
    try:

        def setup() -> None:
            Participant.objects.filter(call=call, user=alice).update(
                state=ParticipantState.JOINED, channel_name=f"{dead}!a1", joined_at=timezone.now()
            )
            Participant.objects.filter(call=call, user=bob).update(
                state=ParticipantState.JOINED, channel_name=f"{live}!b1", joined_at=timezone.now()
            )
            r.sadd(NODES_KEY, dead, live)
            r.hset(sockets_key(dead), f"{dead}!a1", alice.pk)
            r.set(heartbeat_key(live), "1", ex=30)  # the dead one's key has expired

        await sync_to_async(setup)()
        reaped = await sync_to_async(presence_reap_dead_nodes)()
        assert dead in reaped and live not in reaped
        a = await sync_to_async(participant)(call, alice)
        b = await sync_to_async(participant)(call, bob)
        assert a.state == ParticipantState.RECONNECTING and b.state == ParticipantState.JOINED
        assert not r.sismember(NODES_KEY, dead) and not r.exists(sockets_key(dead))
        assert r.sismember(NODES_KEY, live)
    finally:
        r.delete(heartbeat_key(live), sockets_key(dead))
        r.srem(NODES_KEY, dead, live)
        r.close()


async def test_a_live_process_beats_and_lists_its_sockets(connect, alice):
    r = redis.Redis.from_url(settings.REDIS_URL)

    def alices_sockets() -> list[tuple[str, str]]:
        found = []
        for node in r.smembers(NODES_KEY):
            node = node.decode()
            for channel, uid in r.hgetall(sockets_key(node)).items():
                if uid == str(alice.pk).encode():
                    found.append((node, channel.decode()))
        return found

    try:
        sock = await connect(alice, path="/ws/signal/?ice=0")
        for _ in range(50):
            if alices_sockets():
                break
            await asyncio.sleep(0.05)
        [(node, channel)] = alices_sockets()
        assert r.exists(heartbeat_key(node)) and channel.startswith(node + "!")
        ttl = r.ttl(heartbeat_key(node))
        assert 0 < ttl <= settings.PRESENCE_TTL_SECONDS
        await sock.close()
        assert alices_sockets() == []
    finally:
        r.close()


async def test_sockets_open_while_a_dead_process_is_still_being_reaped(
    connect, alice, bob, charlie
):
    """A process starting after a crash hands the dead one's devices their grace window (the
    reap), which takes seconds for a thousand devices. Sockets opening meanwhile don't wait for
    it: here the reap is held up by a row lock, and a socket still opens."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("holds a row lock from a second connection: PostgreSQL")
    import psycopg

    call = await sync_to_async(call_start)(caller=bob, callee=charlie)
    await sync_to_async(Participant.objects.filter(call=call, user=bob).update)(
        state=ParticipantState.JOINED, channel_name="crashed!c1", session="s-crashed"
    )
    bob_p = await sync_to_async(Participant.objects.get)(call=call, user=bob)
    r = redis.Redis.from_url(settings.REDIS_URL)
    r.sadd(NODES_KEY, "crashed")  # listed, with no heartbeat: it died

    s = connection.settings_dict
    lock = psycopg.connect(
        host=s["HOST"] or "127.0.0.1",
        port=s["PORT"] or 5432,
        user=s["USER"],
        password=s["PASSWORD"] or None,
        dbname=s["NAME"],
    )
    lock.execute("SELECT 1 FROM calls_participant WHERE id = %s FOR UPDATE", [bob_p.pk])
    # Whatever happens, the reap is held up for 8 s at most (a socket that waited for it would
    # open only then, and find bob already reconnecting).
    release = asyncio.get_running_loop().call_later(8, lock.rollback)
    try:
        a = await connect(alice)  # starts this process's presence, and with it the reap
        assert a is not None and a.welcome["type"] == "welcome"
        state = (await sync_to_async(Participant.objects.get)(pk=bob_p.pk)).state
        assert state == ParticipantState.JOINED  # the reap was still held up
    finally:
        release.cancel()
        lock.rollback()  # the reap goes on
        lock.close()
    # The reap's end, not its first write: the participant turns `reconnecting` before the dead
    # process is forgotten in Redis (polling the first and reading the second raced, in CI).
    presence = _by_loop[asyncio.get_running_loop()]
    assert presence.reaping is not None
    await asyncio.wait_for(asyncio.shield(presence.reaping), 10)
    bob_p = await sync_to_async(Participant.objects.get)(pk=bob_p.pk)
    assert bob_p.state == ParticipantState.RECONNECTING
    assert not r.sismember(NODES_KEY, "crashed")
    assert not r.exists(sockets_key("crashed"))
    r.close()


async def test_frames_about_a_peer_that_arrive_out_of_order_say_which_came_last(
    connect, alice, bob, call
):
    """A server restart mid-call: the new process marks the old one's devices `reconnecting` on
    a thread of its own (the reap), while bob, back first, resumes. The reap commits first, and
    its frames may go out last: here they do, held back on purpose. Alice then gets bob's
    `peer-reconnecting` after his `peer-joined` (a page that took the last to arrive stayed at
    "signaling dropped" for good: CI saw it); the steps they carry say the `peer-joined` is the
    newer."""
    a, b = await in_call(connect, alice, bob, call)
    sessions = {"a": a.welcome["body"]["session"], "b": b.welcome["body"]["session"]}
    last = {"a": await drain(a), "b": await drain(b)}
    node = node_of((await sync_to_async(participant)(call, alice)).channel_name)
    for sock in (a, b):  # the process stops: its consumers are cancelled, and record nothing
        sock.c.future.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sock.c.future

    held: list = []
    token = _collected.set(held)  # the reap's frames are kept, not sent
    try:
        assert await in_db_pool(participants_disconnect_node)(node=node) == 2
    finally:
        _collected.reset(token)
    b2 = await connect(bob)
    await b2.send("resume", body={"session": sessions["b"], "lastSeq": last["b"]})
    assert (await b2.recv_type("resumed"))["body"]["calls"] == [str(call.id)]
    for kind, targets, event in held:  # now the reap's frames go out, late
        await _deliver(kind, targets, event)

    a2 = await connect(alice)
    await a2.send("resume", body={"session": sessions["a"], "lastSeq": last["a"]})
    await a2.recv_type("resumed")
    got = []
    while not await a2.nothing(0.5):
        got.append(await a2.recv())
    about_bob = [  # since the restart (the replay starts with the frames of the first join)
        (m["type"], m["body"]["step"])
        for m in got
        if m["type"] in ("peer-joined", "peer-reconnecting")
        and m["body"]["user"] == bob.pk
        and m["body"].get("resumed", True)
    ]
    assert [kind for kind, _ in about_bob] == ["peer-joined", "peer-reconnecting"], got
    newest = max(about_bob, key=lambda kind_step: kind_step[1])
    assert newest == ("peer-joined", await step_of(call, "resumed", bob))
    assert dict(about_bob)["peer-reconnecting"] == await step_of(call, "reconnecting", bob)
    assert (await sync_to_async(participant)(call, bob)).state == ParticipantState.JOINED
