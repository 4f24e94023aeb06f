"""Early ICE: a ringing device of the callee and the caller's device negotiate before the
answer (docs/signaling.md). Who may address whom while it rings, in which order devices meet,
and that the answer, a decline or a dropped device ends it."""

from __future__ import annotations

import pytest
from django.test import override_settings

from calls.services import call_start
from signaling.early import EARLY_DEVICES_MAX

from .test_signaling import ANSWER, CANDIDATE, OFFER

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def call(alice, bob):
    return call_start(caller=alice, callee=bob)


async def caller_joined(connect, alice, call):
    a = await connect(alice)
    await a.send("join", call.id)
    joined = await a.recv_type("joined")
    assert joined["body"]["peers"] == [] and joined["body"]["early"] == []
    return a


async def ringing_early(sock, call) -> dict:
    ref = await sock.send("early", call.id)
    ready = await sock.recv_type("early-ready")
    assert ready["ref"] == ref and ready["call"] == str(call.id)
    return ready["body"]


@pytest.mark.smoke
async def test_a_ringing_device_and_the_caller_negotiate_before_the_answer(
    connect, alice, bob, call
):
    a = await caller_joined(connect, alice, call)
    b = await connect(bob)
    assert [r["call"] for r in b.welcome["body"]["ringing"]] == [str(call.id)]  # it rings
    ready = await ringing_early(b, call)
    assert ready["peers"] == [
        {"user": alice.pk, "session": a.session, "username": "alice", "name": alice.label()}
    ]
    met = await a.recv_type("early-peer")
    assert met["body"] == {
        "user": bob.pk,
        "session": b.session,
        "username": "bob",
        "name": bob.label(),
    }
    # Offer, answer and candidates both ways, addressed to the device session.
    await a.send("offer", call.id, {**OFFER, "to": b.session})
    got = await b.recv_type("offer")
    assert got["body"]["fromSession"] == a.session and got["body"]["from"] == alice.pk
    await b.send("answer", call.id, {**ANSWER, "to": a.session})
    assert (await a.recv_type("answer"))["body"]["fromSession"] == b.session
    await b.send("candidate", call.id, {**CANDIDATE, "to": a.session})
    await a.recv_type("candidate")
    await a.send("candidate", call.id, {**CANDIDATE, "to": b.session})
    await b.recv_type("candidate")
    # While it rings, `to` is required: the caller may have several devices to reach.
    await a.send("candidate", call.id, CANDIDATE)
    assert (await a.error())["code"] == "to_required"


async def test_a_device_that_rang_first_meets_the_caller_when_the_caller_joins(
    connect, alice, bob, call
):
    b = await connect(bob)
    assert (await ringing_early(b, call))["peers"] == []
    a = await connect(alice)
    await a.send("join", call.id)
    joined = await a.recv_type("joined")
    assert [e["session"] for e in joined["body"]["early"]] == [b.session]
    met = await b.recv_type("early-peer")
    assert met["body"]["session"] == a.session and met["body"]["user"] == alice.pk
    await a.send("offer", call.id, {**OFFER, "to": b.session})
    await b.recv_type("offer")
    await b.send("answer", call.id, {**ANSWER, "to": a.session})
    await a.recv_type("answer")


async def test_nobody_else_can_address_or_be_addressed_while_it_rings(
    connect, alice, bob, charlie, call
):
    """Only the devices that said `early` meet the caller: bob's other device, charlie's, and
    charlie with a call of his own get not_a_peer / not_joined, and hear nothing."""
    a = await caller_joined(connect, alice, call)
    b = await connect(bob)
    await ringing_early(b, call)
    await a.recv_type("early-peer")
    b2 = await connect(bob)  # rings too, but never said `early`
    c = await connect(charlie)
    for sock in (a, b):
        for to in (b2.session, c.session, "s-made-up"):
            await sock.send("candidate", call.id, {**CANDIDATE, "to": to})
            assert (await sock.error())["code"] == "not_a_peer"
    await b2.send("candidate", call.id, {**CANDIDATE, "to": a.session})
    assert (await b2.error())["code"] == "not_joined"
    await c.send("candidate", call.id, {**CANDIDATE, "to": a.session})
    assert (await c.error())["code"] == "not_joined"
    # charlie can't make himself an early device of a call that isn't his.
    await c.send("early", call.id)
    assert (await c.error())["code"] == "forbidden"
    assert await a.nothing() and await b.nothing()


async def test_only_a_ringing_callee_negotiates_early(connect, alice, bob, call):
    a = await caller_joined(connect, alice, call)
    await a.send("early", call.id)  # the caller
    assert (await a.error())["code"] == "not_ringing"
    b = await connect(bob)
    await b.send("accept", call.id)
    await b.recv_type("joined")
    b2 = await connect(bob)
    await b2.send("early", call.id)  # answered already
    assert (await b2.error())["code"] == "not_ringing"


@override_settings(CALL_EARLY_ICE=False)
async def test_with_early_ice_off_nothing_is_negotiated_before_the_answer(
    connect, alice, bob, call
):
    a = await caller_joined(connect, alice, call)
    b = await connect(bob)
    await b.send("early", call.id)
    assert (await b.error())["code"] == "early_ice_off"
    await b.send("offer", call.id, {**OFFER, "to": a.session})
    assert (await b.error())["code"] == "not_joined"
    assert await a.nothing()


async def test_past_the_limit_a_device_negotiates_after_answering(connect, alice, bob, call):
    a = await caller_joined(connect, alice, call)
    devices = [await connect(bob) for _ in range(EARLY_DEVICES_MAX + 1)]
    for sock in devices[:-1]:
        await ringing_early(sock, call)
    await devices[-1].send("early", call.id)
    assert (await devices[-1].error())["code"] == "early_full"
    # Saying it again is no new device.
    await ringing_early(devices[0], call)
    assert len({(await a.recv_type("early-peer"))["body"]["session"] for _ in devices[:-1]}) == (
        EARLY_DEVICES_MAX
    )


async def test_the_answer_ends_early_negotiation_for_the_other_devices(connect, alice, bob, call):
    a = await caller_joined(connect, alice, call)
    b1, b2 = await connect(bob), await connect(bob)
    for sock in (b1, b2):
        await ringing_early(sock, call)
        await a.recv_type("early-peer")
    await b1.send("accept", call.id)
    await b1.recv_type("joined")
    joined = await a.recv_type("peer-joined")
    assert joined["body"]["session"] == b1.session
    assert (await b2.recv_type("answered"))["body"]["elsewhere"] is True
    # The device that answered is in the call; the other one can reach nobody.
    await a.send("candidate", call.id, {**CANDIDATE, "to": b1.session})
    await b1.recv_type("candidate")
    await a.send("candidate", call.id, {**CANDIDATE, "to": b2.session})
    assert (await a.error())["code"] == "not_a_peer"
    await b2.send("candidate", call.id, {**CANDIDATE, "to": a.session})
    assert (await b2.error())["code"] == "not_joined"
    # A device that joins now hears of no early device.
    a2 = await connect(alice)
    await a2.send("join", call.id, {"replaces": a.session})
    assert (await a2.recv_type("joined"))["body"]["early"] == []


async def test_a_decline_ends_it_for_both(connect, alice, bob, call):
    a = await caller_joined(connect, alice, call)
    b = await connect(bob)
    await ringing_early(b, call)
    await a.recv_type("early-peer")
    await b.send("decline", call.id)
    assert (await a.recv_type("hangup"))["body"]["reason"] == "declined"
    await b.recv_type("hangup")
    await b.send("candidate", call.id, {**CANDIDATE, "to": a.session})
    assert (await b.error())["code"] == "call_ended"


async def test_a_ringing_device_that_goes_is_closed_on_the_callers_side(connect, alice, bob, call):
    a = await caller_joined(connect, alice, call)
    b = await connect(bob)
    await ringing_early(b, call)
    await a.recv_type("early-peer")
    session = b.session
    await b.close()
    gone = await a.recv_type("early-left")
    assert gone["body"] == {"session": session}
    await a.send("candidate", call.id, {**CANDIDATE, "to": session})
    assert (await a.error())["code"] == "not_a_peer"
    # A caller page that joins again doesn't meet it either.
    a2 = await connect(alice)
    await a2.send("join", call.id, {"replaces": a.session})
    assert (await a2.recv_type("joined"))["body"]["early"] == []


async def test_nothing_of_the_callee_reaches_the_caller_before_a_device_rings(
    connect, alice, bob, call
):
    """The caller learns of a callee device only once that device says `early`."""
    a = await caller_joined(connect, alice, call)
    b = await connect(bob)
    assert await a.nothing(0.5)
    await ringing_early(b, call)
    assert (await a.recv_type("early-peer"))["body"]["session"] == b.session
