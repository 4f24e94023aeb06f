"""Group calls: invitations up to CALL_MAX_PARTICIPANTS, per-peer addressing in a mesh, a hangup
that is a leave while two or more stay, and chat stored with the call."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone

from calls.models import Call, CallState, ChatMessage, Participant, ParticipantState
from calls.services import call_start, calls_expire, chat_prune

from .test_signaling import CANDIDATE, OFFER, in_call, step_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def call(alice, bob):
    return call_start(caller=alice, callee=bob)


@pytest.fixture
def dave(django_user_model, password):
    return django_user_model.objects.create_user("dave", password=password)


async def three_way(connect, alice, bob, charlie, call):
    """alice and bob in the call, charlie invited by alice and answering."""
    a, b = await in_call(connect, alice, bob, call)
    c = await connect(charlie)
    await a.send("invite", call.id, {"username": "Charlie"})
    ring = await c.recv_type("incoming")
    assert ring["call"] == str(call.id) and ring["body"]["group"] is True
    assert ring["body"]["from"]["username"] == "alice"
    for sock in (a, b):
        invited = await sock.recv_type("invited")
        assert invited["body"]["user"]["username"] == "charlie"
    await c.send("accept", call.id)
    joined = await c.recv_type("joined")
    peers = {p["username"]: p["session"] for p in joined["body"]["peers"]}
    assert peers == {"alice": a.session, "bob": b.session}
    for sock in (a, b):
        assert (await sock.recv_type("peer-joined"))["body"]["session"] == c.session
    return a, b, c


@pytest.mark.smoke
async def test_an_invited_person_joins_and_every_pair_talks(connect, alice, bob, charlie, call):
    a, b, c = await three_way(connect, alice, bob, charlie, call)
    # Each pair, each way, addressed to one device.
    for sender, receivers in ((a, (b, c)), (b, (a, c)), (c, (a, b))):
        for r in receivers:
            await sender.send("offer", call.id, {**OFFER, "to": r.session})
            got = await r.recv_type("offer")
            assert got["body"]["fromSession"] == sender.session
    assert await a.nothing() and await b.nothing() and await c.nothing()
    # With two others in the call, a message must say which.
    await a.send("candidate", call.id, CANDIDATE)
    assert (await a.error())["code"] == "to_required"


async def test_invitations_above_the_cap_are_refused(
    connect, alice, bob, charlie, dave, call, settings
):
    settings.CALL_MAX_PARTICIPANTS = 3
    a, b, c = await three_way(connect, alice, bob, charlie, call)
    await b.send("invite", call.id, {"username": "dave"})
    err = await b.error()
    assert err["code"] == "call_full" and "at most 3" in err["message"]
    # The same over the API.
    api = Client()
    await sync_to_async(api.force_login)(bob)
    res = await sync_to_async(api.post)(
        f"/api/v1/calls/{call.id}/invitations/", {"username": "dave"}, "application/json"
    )
    assert res.status_code == 409 and res.json()["error"]["code"] == "call_full"
    count = await sync_to_async(Participant.objects.filter(call=call).count)()
    assert count == 3
    # Inviting someone in the call already, or nobody, is a clear error too.
    await b.send("invite", call.id, {"username": "charlie"})
    assert (await b.error())["code"] == "already_in_call"
    await b.send("invite", call.id, {"username": "nobody-here"})
    assert (await b.error())["code"] == "bad_callee"


async def test_no_invitations_while_the_call_still_rings(connect, alice, bob, charlie, call):
    a = await connect(alice)
    await a.send("join", call.id)
    await a.recv_type("joined")
    await a.send("invite", call.id, {"username": "charlie"})
    assert (await a.error())["code"] == "not_answered"
    assert await sync_to_async(Participant.objects.filter(call=call).count)() == 2


async def test_invitations_over_the_api(connect, alice, bob, charlie, dave, call):
    a, b = await in_call(connect, alice, bob, call)
    d = await connect(dave)
    api = Client()
    await sync_to_async(api.force_login)(charlie)  # an outsider: the call is not found
    res = await sync_to_async(api.post)(
        f"/api/v1/calls/{call.id}/invitations/", {"username": "dave"}, "application/json"
    )
    assert res.status_code == 404
    await sync_to_async(api.force_login)(alice)
    res = await sync_to_async(api.post)(
        f"/api/v1/calls/{call.id}/invitations/", {"username": "dave"}, "application/json"
    )
    assert res.status_code == 201 and res.json()["role"] == "invitee"
    assert (await d.recv_type("incoming"))["call"] == str(call.id)
    # dave declines: only his invitation ends; the call goes on.
    await d.send("decline", call.id)
    for sock in (a, b):
        ended = await sock.recv_type("invite-ended")
        assert ended["body"] == {
            "user": dave.pk,
            "reason": "declined",
            "step": await step_of(call, "invite_declined", dave),
        }
    assert (await sync_to_async(Call.objects.get)(pk=call.pk)).state != CallState.ENDED


async def test_a_hangup_in_a_group_call_is_a_leave(connect, alice, bob, charlie, call):
    a, b, c = await three_way(connect, alice, bob, charlie, call)
    await c.send("hangup", call.id)
    assert (await c.recv_type("hangup"))["body"]["by"] == charlie.pk
    for sock in (a, b):
        assert (await sock.recv_type("peer-left"))["body"]["user"] == charlie.pk
    await a.send("candidate", call.id, {**CANDIDATE, "to": c.session})
    assert (await a.error())["code"] == "not_a_peer"
    await a.send("candidate", call.id, CANDIDATE)  # one other device left: no `to` needed
    await b.recv_type("candidate")
    call_now = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert call_now.state != CallState.ENDED
    # With two left, a hangup ends the call for both.
    await b.send("hangup", call.id)
    assert (await a.recv_type("hangup"))["body"]["reason"] == "hangup"
    assert (await sync_to_async(Call.objects.get)(pk=call.pk)).state == CallState.ENDED


async def test_a_group_call_goes_on_when_one_device_never_comes_back(
    connect, alice, bob, charlie, call, settings
):
    a, b, c = await three_way(connect, alice, bob, charlie, call)
    await c.close()
    await a.recv_type("peer-reconnecting")
    later = timezone.now() + timedelta(seconds=settings.SIGNALING_GRACE_SECONDS + 1)
    await sync_to_async(calls_expire)(now=later)
    assert (await a.recv_type("peer-left"))["body"]["user"] == charlie.pk
    assert (await sync_to_async(Call.objects.get)(pk=call.pk)).state != CallState.ENDED


async def test_chat_reaches_everyone_in_the_call_and_is_kept(
    connect, alice, bob, charlie, dave, call
):
    a, b, c = await three_way(connect, alice, bob, charlie, call)
    await b.send("chat", call.id, {"text": "  hello everyone  "})
    for sock in (a, b, c):
        msg = await sock.recv_type("chat")
        assert msg["body"]["text"] == "hello everyone" and msg["body"]["user"] == bob.pk
    stored = await sync_to_async(lambda: list(ChatMessage.objects.filter(call=call)))()
    assert [m.text for m in stored] == ["hello everyone"]

    d = await connect(dave)
    await d.send("chat", call.id, {"text": "let me in"})
    assert (await d.error())["code"] == "not_joined"
    for body in ({"text": ""}, {"text": "x" * 2001}, {"text": 5}):
        await a.send("chat", call.id, body)
        assert (await a.error())["code"] == "bad_body"
    assert await sync_to_async(ChatMessage.objects.count)() == 1


def test_chat_is_pruned_after_its_retention_and_goes_with_the_call(alice, bob, settings):
    call = call_start(caller=alice, callee=bob)
    old = ChatMessage.objects.create(call=call, user=alice, text="old")
    ChatMessage.objects.filter(pk=old.pk).update(at=timezone.now() - timedelta(days=91))
    ChatMessage.objects.create(call=call, user=bob, text="new")
    settings.CHAT_RETENTION_DAYS = 90
    assert chat_prune() == 1
    assert list(ChatMessage.objects.values_list("text", flat=True)) == ["new"]
    settings.CHAT_RETENTION_DAYS = 0
    assert chat_prune() == 0
    call.delete()
    assert ChatMessage.objects.count() == 0
    assert Participant.objects.filter(state=ParticipantState.JOINED).count() == 0


async def test_an_invitation_nobody_answers_ends_alone(
    connect, alice, bob, charlie, call, settings
):
    a, b = await in_call(connect, alice, bob, call)
    c = await connect(charlie)
    await a.send("invite", call.id, {"username": "charlie"})
    await c.recv_type("incoming")
    later = timezone.now() + timedelta(seconds=settings.CALL_RING_TIMEOUT + 1)
    result = await sync_to_async(calls_expire)(now=later)
    assert result["invites_unanswered"] == 1 and result["no_answer"] == 0
    for sock in (a, b):
        ended = await sock.recv_type("invite-ended")
        assert ended["body"] == {
            "user": charlie.pk,
            "reason": "no_answer",
            "step": await step_of(call, "invite_no_answer", charlie),
        }
    assert (await c.recv_type("hangup"))["body"]["reason"] == "no_answer"  # stops ringing
    assert (await sync_to_async(Call.objects.get)(pk=call.pk)).state != CallState.ENDED
