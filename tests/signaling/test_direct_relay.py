"""Under Daphne, an offer, answer or candidate for a device on the same process is relayed in
the callback that read it (SignalConsumer._direct), while frames that need waiting for go
through the consumer's task. Mixed in one stream, they still come out in the order they were
sent, numbered without a gap, each error answering its own frame."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async

from calls.services import call_start

from .conftest import session_cookie
from .test_signaling import CANDIDATE
from .test_two_processes import Device

pytestmark = [pytest.mark.django_db(transaction=True)]


def candidate(port: int) -> dict:
    line = CANDIDATE["candidate"]["candidate"].replace("50000", str(port))
    return {"candidate": {**CANDIDATE["candidate"], "candidate": line}}


async def test_frames_relayed_at_once_and_queued_keep_their_order(web, alice, bob):
    server = web()
    call = await sync_to_async(call_start)(caller=alice, callee=bob)
    a = await Device.open(server, await sync_to_async(session_cookie)(alice))
    b = await Device.open(server, await sync_to_async(session_cookie)(bob))
    await a.send("join", call.id)
    await a.recv_type("joined")
    await b.send("join", call.id)
    await b.recv_type("joined")
    await a.recv_type("peer-joined")
    before = server.health()[1]["relayedAtOnce"]

    # One burst: candidates (relayed at once while alice's consumer waits), pings and a
    # media-state (through its task, the media-state with the database), and candidates for a
    # device that isn't in the call (refused, through its task).
    relayed, answers = [], []
    for i in range(120):
        if i % 10 == 3:
            await a.send("ping", mid=f"p{i}")
            answers.append(("pong", f"p{i}"))
        elif i % 10 == 7:
            await a.send("candidate", call.id, {**candidate(1), "to": "s-nobody"}, mid=f"e{i}")
            answers.append(("error", f"e{i}"))
        elif i == 60:
            body = {"audio": False, "video": True, "screen": False}
            await a.send("media-state", call.id, body, mid="m60")
            relayed.append("media")
        else:
            await a.send("candidate", call.id, {**candidate(40000 + i), "to": b.session})
            relayed.append(40000 + i)

    # Bob gets every candidate once, in the order sent, and the media change where it was
    # sent; every frame numbered one after the other.
    got, seqs = [], []
    async with asyncio.timeout(15):
        while len(got) < len(relayed):
            msg = json.loads(await b.ws.recv())
            seqs.append(msg["seq"])
            assert msg["type"] != "error", msg
            if msg["type"] == "candidate":
                assert msg["body"]["fromSession"] == a.session
                got.append(int(msg["body"]["candidate"]["candidate"].split()[5]))
            elif msg["type"] == "media-state":
                got.append("media")
    assert got == relayed
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

    # Alice gets her answers in the order she asked, each naming its frame.
    heard = []
    async with asyncio.timeout(15):
        while len(heard) < len(answers):
            msg = json.loads(await a.ws.recv())
            if msg["type"] in ("pong", "error"):
                heard.append((msg["type"], msg.get("ref")))
                if msg["type"] == "error":
                    assert msg["body"]["code"] == "not_a_peer", msg
    assert heard == answers

    # Most candidates took the short path (a frame that arrives while the consumer is busy
    # with one before it waits its turn in the queue instead).
    at_once = server.health()[1]["relayedAtOnce"] - before
    assert 0 < at_once <= len(relayed) - 1
    for d in (a, b):
        await d.ws.close()
