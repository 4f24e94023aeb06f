"""Calls that behave like a phone: every transition of the call state machine and every end
reason, through the real ASGI app (WebsocketCommunicator), with the races that matter."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.utils import timezone

from accounts.services import block_create, user_set_do_not_disturb
from calls.models import (
    Call,
    CallEvent,
    CallState,
    EndReason,
    Participant,
    ParticipantState,
    QualitySample,
)
from calls.selectors import missed_count_for
from calls.services import CallError, call_start, calls_expire
from tests.conftest import at_once

from .test_signaling import OFFER, step_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def call(alice, bob):
    return call_start(caller=alice, callee=bob)


def fresh(call) -> Call:
    return Call.objects.get(pk=call.pk)


async def settled(call) -> Call:
    """The call once both racing frames were handled (it left `ringing`, then a moment more)."""
    for _ in range(50):
        c = await sync_to_async(fresh)(call)
        if c.state != CallState.RINGING:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    return await sync_to_async(fresh)(call)


def events(call) -> list[str]:
    return list(CallEvent.objects.filter(call=call).values_list("name", flat=True))


async def ringing(connect, alice, bob, call, devices: int = 2):
    """alice's device joined (ringback); bob has `devices` devices, all ringing."""
    a = await connect(alice)
    await a.send("join", call.id)
    assert (await a.recv_type("joined"))["body"]["state"] == "ringing"
    bs = [await connect(bob) for _ in range(devices)]
    for b in bs:  # a device that connects while it rings hears it in its welcome
        assert [r["call"] for r in b.welcome["body"]["ringing"]] == [str(call.id)]
    return a, bs


async def test_accept_first_answer_wins_and_other_devices_stop_ringing(connect, alice, bob, call):
    a, (b1, b2) = await ringing(connect, alice, bob, call)
    await b1.send("accept", call.id, {"video": False})
    joined = await b1.recv_type("joined")
    assert joined["body"]["state"] == "connecting" and joined["body"]["role"] == "callee"
    assert [p["username"] for p in joined["body"]["peers"]] == ["alice"]
    assert (await b2.recv_type("answered"))["body"] == {"elsewhere": True}
    got = {m["type"]: m["body"] for m in [await a.recv(), await a.recv()]}
    assert got["state"]["state"] == "connecting"
    assert (
        got["peer-joined"].items()
        >= {"user": bob.pk, "session": b1.session, "resumed": False}.items()
    )

    await b2.send("accept", call.id)
    assert (await b2.error())["code"] == "answered_elsewhere"
    # Joining from the other device doesn't silently take the call over either.
    await b2.send("join", call.id)
    assert (await b2.error())["code"] == "in_call_elsewhere"

    c = await sync_to_async(fresh)(call)
    assert c.state == CallState.CONNECTING and c.answered_at is not None
    bob_p = await sync_to_async(Participant.objects.get)(call=call, user=bob)
    assert bob_p.session == b1.welcome["body"]["session"] and bob_p.video is False
    assert await sync_to_async(events)(call) == ["ringing", "joined", "accepted", "connecting"]


async def test_connected_when_a_device_reports_its_path(connect, alice, bob, call):
    a, (b,) = await ringing(connect, alice, bob, call, devices=1)
    await b.send("accept", call.id)
    await b.recv_type("joined")
    await a.send("report", call.id, {"connectionType": "relay", "relayUrl": "", "rttMs": 12})
    seen = set()
    while seen != {"reported", "connected"}:
        msg = await a.recv()
        if msg["type"] == "reported" or msg["body"].get("state") == "connected":
            seen.add("reported" if msg["type"] == "reported" else "connected")
    while (msg := await b.recv_type("state"))["body"]["state"] != "connected":
        pass
    assert msg["body"]["at"]
    c = await sync_to_async(fresh)(call)
    assert c.state == CallState.CONNECTED and c.connected_at >= c.answered_at


async def test_decline_ends_the_call_for_everyone(connect, alice, bob, call):
    a, (b1, b2) = await ringing(connect, alice, bob, call)
    await b2.send("decline", call.id)
    for sock in (a, b1, b2):
        msg = await sock.recv_type("hangup")
        assert msg["body"] == {"by": bob.pk, "reason": "declined"}
    c = await sync_to_async(fresh)(call)
    assert c.end_reason == EndReason.DECLINED and not c.missed
    await b1.send("accept", call.id)
    assert (await b1.error())["code"] == "call_ended"


async def test_cancel_is_a_missed_call_for_the_callee(connect, client, alice, bob, call):
    a, (b,) = await ringing(connect, alice, bob, call, devices=1)
    await a.send("cancel", call.id)
    assert (await b.recv_type("hangup"))["body"] == {"by": alice.pk, "reason": "cancelled"}
    assert (await a.recv_type("hangup"))["body"]["reason"] == "cancelled"
    c = await sync_to_async(fresh)(call)
    assert c.missed and c.end_reason == EndReason.CANCELLED
    assert await sync_to_async(missed_count_for)(user=bob) == 1
    assert await sync_to_async(missed_count_for)(user=alice) == 0  # not missed by the caller

    # Counted on the home page until the history is opened.
    await sync_to_async(client.force_login)(bob)
    home = (await sync_to_async(client.get)("/")).content.decode()
    assert 'id="missed-count"><strong>1</strong> missed call' in home
    history = (await sync_to_async(client.get)("/calls/")).content.decode()
    assert "state-missed" in history and "unseen" in history
    assert await sync_to_async(missed_count_for)(user=bob) == 0


async def test_roles_are_checked(connect, alice, bob, call):
    a, (b,) = await ringing(connect, alice, bob, call, devices=1)
    await a.send("decline", call.id)
    assert (await a.error())["code"] == "wrong_role"
    await a.send("accept", call.id)
    assert (await a.error())["code"] == "wrong_role"
    await b.send("cancel", call.id)
    assert (await b.error())["code"] == "wrong_role"
    assert (await sync_to_async(fresh)(call)).state == CallState.RINGING


async def test_hangup_while_ringing_is_cancel_or_decline(connect, alice, bob, charlie):
    first = await sync_to_async(call_start)(caller=alice, callee=bob)
    a, (b,) = await ringing(connect, alice, bob, first, devices=1)
    await a.send("hangup", first.id)
    assert (await b.recv_type("hangup"))["body"]["reason"] == "cancelled"
    second = await sync_to_async(call_start)(caller=charlie, callee=bob)
    await b.recv_type("incoming")
    await b.send("hangup", second.id)
    assert (await b.recv_type("hangup"))["body"]["reason"] == "declined"


async def test_failed_is_an_end_reason_the_client_gives(connect, alice, bob, call):
    a, (b,) = await ringing(connect, alice, bob, call, devices=1)
    await b.send("accept", call.id)
    await b.recv_type("joined")
    await a.send("hangup", call.id, {"reason": "failed"})
    assert (await b.recv_type("hangup"))["body"]["reason"] == "failed"
    await a.send("hangup", call.id, {"reason": "teleported"})
    assert (await a.error())["code"] == "bad_body"


async def test_a_callee_in_a_call_is_busy_and_does_not_ring(connect, alice, bob, charlie, call):
    a, (b,) = await ringing(connect, alice, bob, call, devices=1)
    await b.send("accept", call.id)
    await b.recv_type("joined")
    busy = await sync_to_async(call_start)(caller=charlie, callee=bob)
    assert busy.state == CallState.ENDED and busy.end_reason == EndReason.BUSY
    assert not busy.missed
    await b.send("ping")
    await b.recv_type("pong")
    assert await b.nothing(0.3)  # no `incoming` for the busy call
    assert await sync_to_async(events)(busy) == ["ringing", "ended"]


async def test_do_not_disturb_goes_straight_to_missed(connect, alice, bob):
    await sync_to_async(user_set_do_not_disturb)(user=bob, on=True)
    b = await connect(bob)
    call = await sync_to_async(call_start)(caller=alice, callee=bob)
    assert call.state == CallState.ENDED and call.end_reason == EndReason.NO_ANSWER and call.missed
    assert await b.nothing(0.3)


async def test_a_blocked_caller_sees_unavailable_and_nothing_is_stored(connect, alice, bob):
    await sync_to_async(block_create)(blocker=bob, blocked=alice)
    b = await connect(bob)
    with pytest.raises(CallError) as exc:
        await sync_to_async(call_start)(caller=alice, callee=bob)
    assert exc.value.code == "unavailable"
    assert not await sync_to_async(Call.objects.exists)()
    assert await b.nothing(0.3)
    # The block is one way: bob can still call alice.
    assert (await sync_to_async(call_start)(caller=bob, callee=alice)).state == CallState.RINGING


async def test_no_answer_ends_for_both_sides_and_is_missed(connect, alice, bob, call, settings):
    a, (b,) = await ringing(connect, alice, bob, call, devices=1)
    later = timezone.now() + timedelta(seconds=settings.CALL_RING_TIMEOUT + 1)
    assert (await sync_to_async(calls_expire)(now=later))["no_answer"] == 1
    for sock in (a, b):
        assert (await sock.recv_type("hangup"))["body"] == {"by": None, "reason": "no_answer"}
    c = await sync_to_async(fresh)(call)
    assert c.missed and c.end_reason == EndReason.NO_ANSWER


async def test_take_over_moves_the_call_and_tells_the_first_device(connect, alice, bob, call):
    a, (b1, b2) = await ringing(connect, alice, bob, call)
    await b1.send("accept", call.id)
    await b1.recv_type("joined")
    await a.recv_type("peer-joined")
    await b2.send("take-over", call.id)
    assert (await b2.recv_type("joined"))["body"]["peers"][0]["username"] == "alice"
    assert (await b1.recv_type("taken-over"))["call"] == str(call.id)
    assert (await a.recv_type("peer-joined"))["body"] == {
        "user": bob.pk,
        "session": b2.session,
        "resumed": False,
        "username": "bob",
        "name": "Bob",
        "step": await step_of(call, "taken_over", bob),
    }
    # The first device is out of the call; the second one signals.
    await b1.send("offer", call.id, OFFER)
    assert (await b1.error())["code"] == "not_joined"
    await b2.send("offer", call.id, OFFER)
    assert (await a.recv_type("offer"))["body"]["from"] == bob.pk
    assert "taken_over" in await sync_to_async(events)(call)


async def test_media_state_reaches_the_peer_and_is_kept(connect, alice, bob, call):
    a, (b,) = await ringing(connect, alice, bob, call, devices=1)
    await b.send("accept", call.id)
    await b.recv_type("joined")
    await a.send("media-state", call.id, {"audio": False, "video": True, "screen": False})
    got = await b.recv_type("media-state")
    assert got["body"] == {"user": alice.pk, "audio": False, "video": True, "screen": False}
    await a.send("media-state", call.id, {"audio": "off"})
    assert (await a.error())["code"] == "bad_body"
    # A device that comes back sees the peer's last state in `joined`.
    await b.close()
    b2 = await connect(bob)
    await b2.send("join", call.id, {"replaces": b.welcome["body"]["session"]})
    peers = (await b2.recv_type("joined"))["body"]["peers"]
    assert peers[0]["media"] == {"audio": False, "video": True, "screen": False}


async def test_stats_are_stored_sampled_and_graded(connect, alice, bob, call):
    a, (b,) = await ringing(connect, alice, bob, call, devices=1)
    await b.send("accept", call.id)
    await b.recv_type("joined")
    body = {"path": "relay", "relayUrl": "turn:r.example:3478", "rttMs": 180, "lossPct": 1.5}
    await a.send("stats", call.id, {**body, "bitrateKbps": 900})
    await a.send("stats", call.id, body)  # within 2 s: dropped
    await a.send("stats", call.id, {"path": "relay", "rttMs": -1})
    assert (await a.error())["code"] == "bad_body"
    samples = await sync_to_async(list)(QualitySample.objects.all())
    assert len(samples) == 1 and samples[0].grade == "fair" and samples[0].bitrate_kbps == 900
    assert (await sync_to_async(fresh)(call)).state == CallState.CONNECTED


# --- races ----------------------------------------------------------------------------------


async def test_two_devices_answering_at_once(connect, alice, bob, call):
    a, (b1, b2) = await ringing(connect, alice, bob, call)
    await asyncio.gather(b1.send("accept", call.id), b2.send("accept", call.id))
    outcomes = []
    for b in (b1, b2):
        while True:
            msg = await b.recv()
            if msg["type"] in ("joined", "error"):
                outcomes.append(msg["type"] if msg["type"] == "joined" else msg["body"]["code"])
                break
    assert sorted(outcomes) == ["answered_elsewhere", "joined"]
    assert (
        await sync_to_async(
            Participant.objects.filter(call=call, user=bob, state=ParticipantState.JOINED).count
        )()
        == 1
    )


async def test_answer_against_cancel(connect, alice, bob, call):
    a, (b,) = await ringing(connect, alice, bob, call, devices=1)
    await asyncio.gather(b.send("accept", call.id), a.send("cancel", call.id))
    c = await settled(call)
    if c.state == CallState.ENDED:  # the cancel won: the answer was refused
        assert c.end_reason == EndReason.CANCELLED and c.missed
        msg = await b.recv_type("error")
        assert msg["body"]["code"] in ("call_ended", "not_ringing")
    else:  # the answer won: the cancel was refused, and the call goes on
        assert c.state == CallState.CONNECTING
        assert (await a.error())["code"] == "not_ringing"


async def test_decline_against_cancel(connect, alice, bob, call):
    a, (b,) = await ringing(connect, alice, bob, call, devices=1)
    await asyncio.gather(b.send("decline", call.id), a.send("cancel", call.id))
    c = await settled(call)
    assert c.state == CallState.ENDED and c.end_reason in (EndReason.DECLINED, EndReason.CANCELLED)
    # Both sides hear the same ending, once.
    for sock in (a, b):
        assert (await sock.recv_type("hangup"))["body"]["reason"] == c.end_reason
    assert await sync_to_async(events)(call) == ["ringing", "joined", "ended"]


def test_glare_two_people_calling_each_other_end_up_in_one_call(alice, bob):
    if connection.vendor == "sqlite":
        pytest.skip("row locks: PostgreSQL")
    by_alice, by_bob = at_once(
        lambda: call_start(caller=alice, callee=bob),
        lambda: call_start(caller=bob, callee=alice),
        timeout=10,
    )
    results = {"alice": by_alice, "bob": by_bob}
    assert results["alice"].pk == results["bob"].pk
    assert Call.objects.count() == 1
    assert "glare" in events(results["alice"])
