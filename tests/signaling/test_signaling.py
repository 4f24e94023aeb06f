"""The signaling socket: who may send what to whom, and what bad input gets back."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from calls.models import Call, CallEvent, CallState, Participant
from calls.services import call_start
from tests.conftest import up_relay

pytestmark = pytest.mark.django_db(transaction=True)

OFFER = {"description": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}
ANSWER = {"description": {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n"}}
CANDIDATE = {
    "candidate": {
        "candidate": "candidate:1 1 udp 1 127.0.0.1 50000 typ relay",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
}


@pytest.fixture
def call(alice, bob):
    return call_start(caller=alice, callee=bob)


@sync_to_async
def step_of(call, name: str, user) -> int:
    """The step (see calls.services._record) of the user's last `name` event in the call."""
    return CallEvent.objects.filter(call=call, name=name, user=user).latest("id").pk


async def in_call(connect, alice, bob, call):
    """alice and bob both joined the call; returns their sockets with the join frames consumed."""
    a = await connect(alice)
    b = await connect(bob)
    await a.send("join", call.id)
    joined_a = await a.recv_type("joined")
    assert joined_a["body"]["peers"] == [] and joined_a["body"]["polite"] is False
    await b.send("join", call.id)
    joined_b = await b.recv_type("joined")
    assert [p["username"] for p in joined_b["body"]["peers"]] == ["alice"] and joined_b["body"][
        "polite"
    ] is True
    # Each join says its step: frames about a peer below it are older than its list of peers.
    assert joined_a["body"]["step"] == await step_of(call, "joined", alice)
    assert joined_b["body"]["step"] == await step_of(call, "accepted", bob)
    peer_joined = await a.recv_type("peer-joined")
    assert peer_joined["body"]["user"] == bob.pk
    assert peer_joined["body"]["step"] == joined_b["body"]["step"]
    # The join that brings the second device moves the call on, and both devices hear it (bob's
    # after his `joined`: frames pushed during a join wait for it).
    assert (await b.recv_type("state"))["body"]["state"] == "connecting"
    return a, b


@pytest.mark.smoke
async def test_anonymous_sockets_are_closed_with_4401(connect):
    # Accepted and closed with our code, so a page stops reconnecting (a refused handshake
    # reaches the browser as 1006, which looks like a network drop).
    assert await connect(None) is None
    assert connect.last_close == 4401


async def test_foreign_origins_are_refused(connect, alice):
    assert await connect(alice, origin=b"http://evil.example") is None


@pytest.mark.smoke
async def test_welcome_carries_the_envelope_and_ice_servers(connect, alice):
    sock = await connect(alice)
    w = sock.welcome
    assert w["v"] == 1 and w["seq"] == 1 and w["body"]["user"]["username"] == "alice"
    assert set(w["body"]["ice"]) >= {"iceServers", "ttl", "expiresAt", "refreshAt", "relays"}


async def test_listening_pages_get_no_credentials(connect, alice):
    from relays.models import CredentialGrant

    sock = await connect(alice, path="/ws/signal/?ice=0")
    assert "ice" not in sock.welcome["body"] and sock.welcome["body"]["user"]["username"] == "alice"
    assert not await sync_to_async(CredentialGrant.objects.exists)()


@pytest.mark.smoke
async def test_offer_answer_and_candidates_reach_only_the_peer(connect, alice, bob, charlie, call):
    a, b = await in_call(connect, alice, bob, call)
    c = await connect(charlie)

    await a.send("offer", call.id, OFFER)
    got = await b.recv_type("offer")
    assert got["call"] == str(call.id) and got["body"]["description"] == OFFER["description"]
    assert got["body"]["from"] == alice.pk
    await b.send("answer", call.id, ANSWER)
    assert (await a.recv_type("answer"))["body"]["description"] == ANSWER["description"]
    await a.send("candidate", call.id, CANDIDATE)
    assert (await b.recv_type("candidate"))["body"]["candidate"] == CANDIDATE["candidate"]
    await b.send("candidate", call.id, {"candidate": None})
    assert (await a.recv_type("candidate"))["body"]["candidate"] is None

    assert await c.nothing()


async def test_outsiders_cannot_join_or_send(connect, alice, bob, charlie, call):
    a, b = await in_call(connect, alice, bob, call)
    c = await connect(charlie)

    await c.send("join", call.id)
    err = await c.error()
    assert err["code"] == "forbidden"
    # In-call messages need a join on this socket first: refused without the database, the
    # same way for outsiders and for calls that don't exist.
    for mtype, body in (
        ("offer", OFFER),
        ("candidate", CANDIDATE),
        ("offer", {**OFFER, "to": a.session}),
        ("report", {"connectionType": "host"}),
    ):
        await c.send(mtype, call.id, body)
        assert (await c.error())["code"] == "not_joined"
    await c.send("hangup", call.id)
    assert (await c.error())["code"] == "forbidden"

    assert await a.nothing() and await b.nothing()
    state = await sync_to_async(lambda: Call.objects.get(pk=call.pk).state)()
    assert state == CallState.CONNECTING


async def test_unknown_calls_look_the_same_as_other_peoples(connect, charlie):
    c = await connect(charlie)
    await c.send("join", "00000000-0000-4000-8000-000000000000")
    assert (await c.error())["code"] == "forbidden"


async def test_members_must_join_before_signaling(connect, alice, bob, call):
    a = await connect(alice)
    await a.send("offer", call.id, OFFER)
    assert (await a.error())["code"] == "not_joined"
    await a.send("join", call.id)
    await a.recv_type("joined")
    await a.send("offer", call.id, OFFER)
    assert (await a.error())["code"] == "peer_not_present"


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_envelope"),
        ('{"v": 1, "type": "teleport", "id": "x"}', "unknown_type"),
        ('{"v": 2, "type": "ping"}', "bad_version"),
        ('{"v": 1, "type": "join"}', "bad_envelope"),
        ('{"v": 1, "type": "join", "call": "not-a-uuid"}', "bad_envelope"),
        ('{"v": 1, "type": "ping", "body": []}', "bad_envelope"),
        (
            '{"v": 1, "type": "offer", "call": "00000000-0000-4000-8000-000000000000", "body": {"description": {"type": "answer", "sdp": "x"}}}',
            "bad_body",
        ),
        (
            '{"v": 1, "type": "report", "call": "00000000-0000-4000-8000-000000000000", "body": {"connectionType": "carrier-pigeon"}}',
            "bad_body",
        ),
        ("[" * 100_000 + "]" * 100_000, "frame_too_large"),
    ],
)
async def test_bad_frames_get_a_coded_error_and_the_socket_stays_up(
    connect, alice, bob, frame, code
):
    a = await connect(alice)
    b = await connect(bob)
    await a.send_raw(frame)
    assert (await a.error())["code"] == code
    await a.send("ping")
    assert (await a.recv_type("pong"))["ref"] == "c-ping"
    await b.send("ping")
    assert (await b.recv_type("pong"))["ref"] == "c-ping"


async def test_oversized_and_binary_frames(connect, alice):
    a = await connect(alice)
    huge = json.dumps({"v": 1, "type": "ping", "body": {"pad": "x" * (64 * 1024)}})
    await a.send_raw(huge)
    assert (await a.error())["code"] == "frame_too_large"
    await a.send_raw(bytes_data=b"\x00\x01")
    assert (await a.error())["code"] == "binary_not_supported"
    await a.send("ping")
    await a.recv_type("pong")


async def test_errors_refer_to_the_message_they_answer(connect, alice):
    a = await connect(alice)
    await a.send_raw('{"v": 1, "type": "teleport", "id": "my-id-42"}')
    err = await a.recv_type("error")
    assert (
        err["ref"] == "my-id-42"
        and err["body"]["code"] == "unknown_type"
        and "teleport" in err["body"]["message"]
    )


async def test_hangup_ends_the_call_for_everyone(connect, alice, bob, call):
    a, b = await in_call(connect, alice, bob, call)
    await b.send("hangup", call.id)
    for sock in (a, b):
        msg = await sock.recv_type("hangup")
        assert msg["body"] == {"by": bob.pk, "reason": "hangup"}
    stored = await sync_to_async(Call.objects.get)(pk=call.pk)
    assert stored.state == CallState.ENDED and stored.ended_at and stored.answered_at
    await a.send("offer", call.id, OFFER)
    assert (await a.error())["code"] == "call_ended"
    await a.send("join", call.id)
    assert (await a.error())["code"] == "call_ended"


async def test_the_callee_hears_the_ring_live(connect, alice, bob):
    b = await connect(bob)
    call = await sync_to_async(call_start)(caller=alice, callee=bob)
    msg = await b.recv_type("incoming")
    assert msg["call"] == str(call.id) and msg["body"]["from"]["username"] == "alice"


async def test_reports_are_stored_for_the_history(connect, alice, bob, call):
    a, b = await in_call(connect, alice, bob, call)
    await a.send(
        "report",
        call.id,
        {"connectionType": "relay", "relayUrl": "turn:x.example:3478?transport=udp", "rttMs": 12.5},
    )
    await a.recv_type("reported")
    p = await sync_to_async(Participant.objects.get)(call=call, user=alice)
    # That URL belongs to no relay alice was given: the type is kept, no relay is claimed.
    assert p.connection_type == "relay" and p.relay_id is None and p.rtt_ms == 12.5


async def test_a_relayed_round_trip_feeds_the_relays_figure_for_the_devices_network(
    connect, alice, bob, call
):
    """A device that declared region eu reports 42 ms through a relay it was given: selection
    for callers in eu now knows that relay's round trip from there."""

    from relays.models import ClientRelayRtt

    relay = await sync_to_async(_relay_given_to)(
        alice, "measured", "turn:m.example:3478?transport=udp"
    )
    a = await connect(alice, path="/ws/signal/?region=eu")
    b = await connect(bob)
    await a.send("join", call.id)
    await a.recv_type("joined")
    await b.send("join", call.id)
    await b.recv_type("joined")
    await a.send(
        "report",
        call.id,
        {"connectionType": "relay", "relayUrl": "turn:m.example:3478?transport=udp", "rttMs": 42},
    )
    await a.recv_type("reported")
    (row,) = await sync_to_async(list)(ClientRelayRtt.objects.filter(relay=relay))
    assert (row.network, row.rtt_ms, row.samples) == ("region:eu", 42.0, 1)


async def test_floods_are_rate_limited_and_the_socket_survives(connect, alice):
    a = await connect(alice)
    for _ in range(300):
        await a.send("ping")
    codes = []
    for _ in range(300):
        msg = await a.recv()
        codes.append(msg["type"] if msg["type"] != "error" else msg["body"]["code"])
    assert "rate_limited" in codes and "pong" in codes


@pytest.mark.ratelimit
async def test_a_socket_over_the_issue_rate_gets_ice_limited_in_its_welcome(
    connect, alice, settings
):
    settings.ICE_ISSUE_RATE = "1/m"
    first = await connect(alice)
    assert "ice" in first.welcome["body"]
    second = await connect(alice)
    body = second.welcome["body"]
    assert "ice" not in body
    assert body["iceError"]["code"] == "ice_limited" and body["iceError"]["retryAfter"] >= 1
    # Listening pages ask for no credentials and are not counted.
    listener = await connect(alice, path="/ws/signal/?ice=0")
    assert "iceError" not in listener.welcome["body"]


async def test_a_relay_failure_report_is_acknowledged_and_bad_ones_refused(connect, alice):
    a = await connect(alice)
    await a.send("relay-failure", body={"relayUrl": "turn:nobody.example:3478", "problem": "ice"})
    await a.recv_type("relay-failure-noted")
    await a.send("relay-failure", body={"relayUrl": "", "problem": "ice"})
    assert (await a.error())["code"] == "bad_body"
    await a.send("relay-failure", body={"relayUrl": "turn:x:1", "problem": "gremlins"})
    assert (await a.error())["code"] == "bad_body"


def _relay_given_to(user, name: str, url: str):
    """A relay (made up) that `user` was handed, by a grant good for five minutes."""
    from datetime import timedelta

    from django.utils import timezone

    from relays.models import CredentialGrant, Relay

    relay = Relay.objects.create(name=name, urls=[url], secret="s" * 16)
    grant = CredentialGrant.objects.create(
        user=user, expires_at=timezone.now() + timedelta(minutes=5)
    )
    grant.relays.set([relay])
    return relay


def _turn_relay(name):
    return up_relay(name, region="eu")


def _assigned(call, user) -> list[str]:
    p = Participant.objects.get(call=call, user=user)
    return sorted(p.assigned_relays.values_list("name", flat=True))


async def test_the_call_pages_socket_asks_with_the_call_in_mind(connect, alice, bob, charlie):
    for i in range(4):
        await sync_to_async(_turn_relay)(f"eu-{i}")
    call = await sync_to_async(call_start)(caller=alice, callee=bob)
    a = await connect(alice, path=f"/ws/signal/?call={call.id}")
    b = await connect(bob, path=f"/ws/signal/?call={call.id}")
    first = a.welcome["body"]["ice"]["relays"][0]["name"]
    assert b.welcome["body"]["ice"]["relays"][0]["name"] == first
    assert first in await sync_to_async(_assigned)(call, bob)
    # Someone else's call: relays as for no call, and nothing recorded on that call.
    c = await connect(charlie, path=f"/ws/signal/?call={call.id}")
    assert c.welcome["body"]["ice"]["status"] == "ok"
    assert not await sync_to_async(Participant.objects.filter(call=call, user=charlie).exists)()


async def test_gather_times_feed_the_relays_figure_and_bad_reports_are_refused(
    connect, alice, settings
):
    """How long a relay took to give a candidate, for relays this user was given: stored per
    network as a gather figure (selection halves it into a round trip when no pair was
    measured); others are ignored, and malformed reports get bad_body."""

    from relays.models import ClientRelayRtt

    relay = await sync_to_async(_relay_given_to)(
        alice, "gathered", "turn:g.example:3478?transport=udp"
    )
    a = await connect(alice, path="/ws/signal/?region=eu&ice=0")
    await a.send(
        "relay-gather",
        body={
            "gathered": [
                {"relayUrl": "turn:g.example:3478?transport=udp", "ms": 64},
                {"relayUrl": "turn:someone-elses.example:3478", "ms": 5},
            ]
        },
    )
    noted = await a.recv_type("relay-gather-noted")
    assert noted["body"] == {"taken": 1}
    (row,) = await sync_to_async(list)(ClientRelayRtt.objects.all())
    assert (row.relay_id, row.network, row.kind, row.rtt_ms) == (
        relay.id,
        "region:eu",
        "gather",
        64.0,
    )
    for bad in (
        {},
        {"gathered": []},
        {"gathered": [{"relayUrl": "turn:g.example:3478", "ms": -1}]},
        {"gathered": [{"relayUrl": "turn:g.example:3478", "ms": "fast"}]},
        {"gathered": [{"relayUrl": "", "ms": 3}]},
        {"gathered": [{"relayUrl": "turn:g.example:3478", "ms": 3}] * 5},
        {"gathered": ["turn:g.example:3478"]},
    ):
        await a.send("relay-gather", body=bad)
        assert (await a.error())["code"] == "bad_body", bad
    assert await sync_to_async(ClientRelayRtt.objects.count)() == 1
