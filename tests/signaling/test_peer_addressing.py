"""Per-peer messages: `to` names a device session, the hot path needs no database, and a peer
that can't take more is an error for the sender, not a silent drop."""

from __future__ import annotations

import contextlib

import pytest
from asgiref.sync import sync_to_async
from django.db.backends.utils import CursorWrapper

from calls.services import call_start

from .test_signaling import ANSWER, CANDIDATE, OFFER, in_call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def call(alice, bob):
    return call_start(caller=alice, callee=bob)


@contextlib.contextmanager
def counting_queries(monkeypatch):
    """Every SQL statement any thread runs, counted at Django's cursor."""
    seen: list[str] = []
    for name in ("execute", "executemany"):
        real = getattr(CursorWrapper, name)

        def counted(self, sql, *args, _real=real, **kwargs):
            seen.append(sql)
            return _real(self, sql, *args, **kwargs)

        monkeypatch.setattr(CursorWrapper, name, counted)
    yield seen


@pytest.mark.smoke
async def test_messages_go_to_the_device_named_in_to(connect, alice, bob, call):
    a, b = await in_call(connect, alice, bob, call)
    await a.send("offer", call.id, {**OFFER, "to": b.session})
    got = await b.recv_type("offer")
    assert "to" not in got["body"]
    assert got["body"]["from"] == alice.pk and got["body"]["fromSession"] == a.session
    assert got["body"]["description"] == OFFER["description"]
    await b.send("answer", call.id, {**ANSWER, "to": a.session})
    assert (await a.recv_type("answer"))["body"]["fromSession"] == b.session
    # Without `to`, a call with one other device sends to it.
    await b.send("candidate", call.id, CANDIDATE)
    assert (await a.recv_type("candidate"))["body"]["candidate"] == CANDIDATE["candidate"]


async def test_a_device_outside_the_call_cant_be_addressed(connect, alice, bob, charlie, call):
    a, b = await in_call(connect, alice, bob, call)
    c = await connect(charlie)
    b2 = await connect(bob)  # bob's other device, not in the call
    for to in (c.session, b2.session, a.session, "s-made-up"):
        await a.send("candidate", call.id, {**CANDIDATE, "to": to})
        err = await a.recv_type("error")
        assert err["body"]["code"] == "not_a_peer" and err["ref"] == "c-candidate"
    assert await c.nothing() and await b2.nothing() and await b.nothing()
    await a.send("offer", call.id, {**OFFER, "to": 42})
    assert (await a.error())["code"] == "bad_body"


async def test_an_outsider_cant_address_a_member(
    connect, alice, bob, charlie, call, django_user_model, password
):
    """charlie, in a call of his own, can't reach bob's device through it, nor alice's through
    the call she has with bob."""
    a, b = await in_call(connect, alice, bob, call)
    dave = await sync_to_async(django_user_model.objects.create_user)("dave", password=password)
    other = await sync_to_async(call_start)(caller=charlie, callee=dave)
    c, d = await connect(charlie), await connect(dave)
    for sock in (c, d):
        await sock.send("join", other.id)
        await sock.recv_type("joined")
    await c.send("offer", other.id, {**OFFER, "to": b.session})
    assert (await c.error())["code"] == "not_a_peer"
    await c.send("offer", call.id, {**OFFER, "to": a.session})
    assert (await c.error())["code"] == "not_joined"
    assert await a.nothing() and await b.nothing()


async def test_offer_answer_and_candidates_touch_no_database(
    connect, alice, bob, call, monkeypatch
):
    a, b = await in_call(connect, alice, bob, call)
    with counting_queries(monkeypatch) as queries:
        for _ in range(20):
            await a.send("candidate", call.id, {**CANDIDATE, "to": b.session})
            await b.send("candidate", call.id, CANDIDATE)
        await a.send("offer", call.id, {**OFFER, "to": b.session})
        await b.send("answer", call.id, {**ANSWER, "to": a.session})
        for _ in range(20):
            await b.recv_type("candidate")
            await a.recv_type("candidate")
        await b.recv_type("offer")
        await a.recv_type("answer")
    assert queries == []
    # A control message still goes through the database (the count is not blind).
    with counting_queries(monkeypatch) as queries:
        await a.send("media-state", call.id, {"audio": True, "video": False, "screen": False})
        await b.recv_type("media-state")
    assert queries


async def test_membership_follows_the_call_without_the_database(connect, alice, bob, call):
    """What the hot path knows comes from the call's frames: a take-over re-routes to the new
    device, and a hangup stops everything."""
    a, b = await in_call(connect, alice, bob, call)
    b2 = await connect(bob)
    await b2.send("take-over", call.id)
    await b2.recv_type("joined")
    await b.recv_type("taken-over")
    await a.recv_type("peer-joined")
    await a.send("candidate", call.id, {**CANDIDATE, "to": b.session})
    assert (await a.error())["code"] == "not_a_peer"
    await a.send("candidate", call.id, CANDIDATE)  # the one device now in the call
    assert (await b2.recv_type("candidate"))["body"]["fromSession"] == a.session
    await b.send("candidate", call.id, CANDIDATE)
    assert (await b.error())["code"] == "not_joined"

    await b2.send("hangup", call.id)
    await a.recv_type("hangup")
    await a.send("candidate", call.id, CANDIDATE)
    assert (await a.error())["code"] == "call_ended"


async def test_a_full_queue_for_a_device_that_is_away_is_an_error(
    connect, alice, bob, call, settings
):
    from signaling.consumers import PEER_QUEUE_FRAMES

    settings.SIGNALING_RATE_BURST = 10_000.0
    a, b = await in_call(connect, alice, bob, call)
    await b.close()
    await a.recv_type("peer-reconnecting")
    for i in range(PEER_QUEUE_FRAMES):
        await a.send("candidate", call.id, {**CANDIDATE, "to": b.session}, id=f"c{i}")
    assert await a.nothing(0.5)
    await a.send("candidate", call.id, {**CANDIDATE, "to": b.session}, id="over")
    err = await a.recv_type("error")
    assert err["body"]["code"] == "peer_queue_full" and err["ref"] == "over"

    # Everything that was accepted waits for the device, and comes when it resumes.
    b_again = await connect(bob)
    await b_again.send("resume", body={"session": b.session, "lastSeq": 0})
    resumed = await b_again.recv_type("resumed")
    frames = [await b_again.recv() for _ in range(resumed["body"]["replayed"])]
    assert sum(f["type"] == "candidate" for f in frames) == PEER_QUEUE_FRAMES
