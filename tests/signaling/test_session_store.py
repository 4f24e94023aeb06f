"""The session store (signaling/sessions.py): who numbers a frame, what is kept for a resume,
and the pipelines every call goes through (calls made while one is under way share a round trip,
each keeping its own order, result and error)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError

from signaling import sessions
from signaling.sessions import (
    MOVED,
    close_pipeline,
    delivery_header,
    parse_forwarded,
    session_adopt,
    session_detach,
    session_forget,
    session_open,
    session_push,
    session_store,
)
from tests.conftest import free_port


@pytest.fixture
async def redis():
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    yield client
    await close_pipeline(client)
    await client.aclose()


async def away(redis, session: str, user_id: int = 1) -> str:
    """A session whose socket closed: pushes to it are numbered and kept in Redis."""
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=user_id, channel="node!gone")
    await session_detach(redis, session=session, channel="node!gone")
    return session


def push(redis, session: str, n: int = 0, limit: int = 0):
    return session_push(
        redis,
        session=session,
        text=f'{{"n":{n}}}',
        publish=delivery_header(session, "candidate", None),
        limit=limit,
    )


async def test_pushes_in_one_turn_keep_their_order_and_their_own_results(redis):
    s1, s2 = await away(redis, "s-test-a"), await away(redis, "s-test-b")
    await session_forget(redis, session="s-test-gone")
    pushes = [push(redis, s1, i) for i in range(30)]
    pushes += [push(redis, s2, i, limit=3) for i in range(5)]
    pushes.append(push(redis, "s-test-gone"))
    results = await asyncio.gather(*pushes)

    assert results[:30] == [(i, "") for i in range(1, 31)]
    # The device that is away takes 3 frames, then the sender is told its queue is full.
    assert results[30:35] == [(1, ""), (2, ""), (3, ""), (-1, ""), (-1, "")]
    assert results[35] == (0, "")
    seq, _, frames, _ = await session_adopt(
        redis, session=s1, user_id=1, channel="node!new", last_seq=0
    )
    assert seq == 30 and [n for n, _ in frames] == list(range(1, 31))
    assert frames[4][1] == '{"seq":5,"n":4}'


async def test_a_live_session_is_numbered_by_its_owner_not_by_pushes(redis):
    session = "s-test-live"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="nodeX!c1")
    listener = redis.pubsub()
    await listener.subscribe("traverse:node:nodeX")
    # Someone else's frame is forwarded, unnumbered, to the process that holds the socket.
    assert await push(redis, session, 7) == (-2, "nodeX!c1")
    message = None
    while message is None:
        message = await listener.get_message(ignore_subscribe_messages=True, timeout=3)
    assert parse_forwarded(message["data"]) == (session, "candidate", None, '{"n":7}')
    await listener.aclose()

    # The owner numbers and keeps what it sends; a socket that doesn't hold it is refused.
    assert await session_store(redis, session=session, channel="nodeX!c1", seq=1, text="{}") == 1
    assert await session_store(redis, session=session, channel="nodeY!c2", seq=2, text="{}") == 0
    assert await session_store(redis, session="s-test-nope", channel="n!c", seq=1, text="{}") == -2
    seq, old, frames, inbox = await session_adopt(
        redis, session=session, user_id=1, channel="nodeY!c2", last_seq=0
    )
    assert (seq, old, [n for n, _ in frames], inbox) == (1, "nodeX!c1", [1], [])


async def test_frames_for_a_process_nobody_listens_for_wait_for_the_next_owner(redis):
    session = "s-test-orphan"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="deadnode!c1")
    assert await session_store(redis, session=session, channel="deadnode!c1", seq=1, text="{}")
    # The owner died after sending seq 2 and 3, before it kept them; peers keep sending.
    assert [await push(redis, session, i) for i in range(3)] == [(-3, "deadnode!c1")] * 3
    assert await push(redis, session, 9, limit=3) == (-1, "")
    # The page got up to 3 and resumes on another process: it carries on from 3, with what
    # waited.
    seq, old, frames, inbox = await session_adopt(
        redis, session=session, user_id=1, channel="live!c2", last_seq=3
    )
    assert (seq, old, frames) == (3, "deadnode!c1", [])
    assert [parse_forwarded(m)[3] for m in inbox] == ['{"n":0}', '{"n":1}', '{"n":2}']
    _, _, _, again = await session_adopt(
        redis, session=session, user_id=1, channel="live!c3", last_seq=3
    )
    assert again == []


async def test_an_owner_that_lost_its_session_hears_so_and_what_the_page_had_is_not_sent_again(
    redis,
):
    session = "s-test-moved"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="old!c1")
    listener = redis.pubsub()
    await listener.subscribe("traverse:node:old")
    await session_adopt(redis, session=session, user_id=1, channel="new!c2", last_seq=5)
    message = None
    while message is None:
        message = await listener.get_message(ignore_subscribe_messages=True, timeout=3)
    assert parse_forwarded(message["data"]) == (session, MOVED, None, "old!c1")
    await listener.aclose()
    # The old owner's late stores: the page had up to 5 (refused, nothing to do); 6 it had
    # not (refused: send it on).
    assert await session_store(redis, session=session, channel="old!c1", seq=5, text="{}") == -1
    assert await session_store(redis, session=session, channel="old!c1", seq=6, text="{}") == 0
    # Nor can another user take the session, nor a lastSeq far ahead of it.
    assert (await session_adopt(redis, session=session, user_id=2, channel="x!y", last_seq=5))[
        0
    ] == -1
    assert (await session_adopt(redis, session=session, user_id=1, channel="x!y", last_seq=10**6))[
        0
    ] == -2


async def test_a_redis_that_forgot_the_scripts_still_numbers_every_push(redis):
    session = await away(redis, "s-test-flushed")
    assert await push(redis, session) == (1, "")
    await redis.script_flush()  # as a restarted Redis
    results = await asyncio.gather(*(push(redis, session) for _ in range(10)))
    assert [seq for seq, _ in results] == list(range(2, 12))


async def test_pushes_made_while_one_is_under_way_share_one_round_trip(redis, monkeypatch):
    session = await away(redis, "s-test-batched")
    exchanges: list[int] = []
    real = sessions._AutoPipeline._exchange

    async def counted(self, batch, raw=False, due=False):
        if not raw:
            exchanges.append(len(batch))
        return await real(self, batch, raw, due)

    monkeypatch.setattr(sessions._AutoPipeline, "_exchange", counted)
    results = await asyncio.gather(*(push(redis, session) for _ in range(40)))
    assert [seq for seq, _ in results] == list(range(1, 41))
    # The first goes alone, at once; the 39 made meanwhile go together when it is back.
    assert exchanges == [1, 39]


async def test_a_cut_connection_fails_what_was_on_it_and_the_next_push_reconnects(redis):
    session = await away(redis, "s-test-cut")
    assert await push(redis, session) == (1, "")
    connection = sessions._pipelines[redis].connection
    host, port = connection._writer.get_extra_info("sockname")[:2]
    assert await redis.client_kill(f"{host}:{port}")
    outcome = await asyncio.gather(
        *(push(redis, session) for _ in range(3)), return_exceptions=True
    )
    failed = [r for r in outcome if isinstance(r, Exception)]
    assert all(isinstance(r, RedisConnectionError) for r in failed), outcome
    numbered = [r[0] for r in outcome if not isinstance(r, Exception)]
    seq, _ = await push(redis, session)
    assert numbered + [seq] == list(range(2, 2 + len(numbered) + 1))


async def test_an_unreachable_redis_fails_each_waiting_push():
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    results = await asyncio.gather(*(push(dead, "s-x") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await close_pipeline(dead)
    await dead.aclose()


async def test_an_owners_stores_are_kept_even_across_a_script_flush(redis, monkeypatch):
    """Stores go without waiting for their replies, which are read later, in one go."""
    monkeypatch.setattr(sessions, "LAZY_REPLY_SECONDS", 0.2)
    session = "s-test-lazy"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="n!c")
    first = [session_store(redis, session=session, channel="n!c", seq=n, text="{}") for n in (1, 2)]
    assert await asyncio.gather(*first) == [1, 1]
    await redis.script_flush()
    later = [
        session_store(redis, session=session, channel="n!c", seq=n, text=f'{{"n":{n}}}')
        for n in range(3, 13)
    ]
    assert await asyncio.wait_for(asyncio.gather(*later), 5) == [1] * 10
    seq, _, frames, _ = await session_adopt(
        redis, session=session, user_id=1, channel="n!d", last_seq=0
    )
    assert seq == 12 and [n for n, _ in frames] == list(range(1, 13))


async def test_a_store_whose_reply_is_owed_when_redis_drops_the_connection_fails(
    redis, monkeypatch
):
    """A store's reply is read later. When Redis has dropped the connection by then, the store
    fails (the owner logs that a resume won't have the frame) and the next ones are kept on a
    new connection. Before, the failed read dropped the stores still owed a reply, and their
    futures never resolved."""
    monkeypatch.setattr(sessions, "LAZY_REPLY_SECONDS", 0.2)
    session = "s-test-lazy-cut"
    await session_forget(redis, session=session)
    await session_open(redis, session=session, user_id=1, channel="n!c")
    assert await session_store(redis, session=session, channel="n!c", seq=1, text="{}") == 1
    connection = sessions._pipelines[redis].connection
    host, port = connection._writer.get_extra_info("sockname")[:2]
    assert await redis.client_kill(f"{host}:{port}")
    for _ in range(50):  # until this side has seen the close (else the write may still go out)
        if sessions._transport(connection).is_closing():
            break
        await asyncio.sleep(0.01)
    lost = session_store(redis, session=session, channel="n!c", seq=2, text="{}")
    with pytest.raises((RedisConnectionError, ConnectionError)):
        await asyncio.wait_for(lost, 5)
    kept = [session_store(redis, session=session, channel="n!c", seq=n, text="{}") for n in (3, 4)]
    assert await asyncio.wait_for(asyncio.gather(*kept), 5) == [1, 1]
    seq, _, frames, _ = await session_adopt(
        redis, session=session, user_id=1, channel="n!d", last_seq=0
    )
    assert [n for n, _ in frames] == [1, 3, 4]


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "0" * 40, 2, "k:1", "k:2", "héllo ☎", 0, -17, 2**40),
        ("PUBLISH", "traverse:node:n1", b"\x00\r\nbinary\xff"),
        ("SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])"),
        ("SET", "big", "x" * 100_000),
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(command):
    from redis.asyncio.connection import Connection

    assert sessions.pack_commands([command]) == b"".join(Connection().pack_commands([command]))


@pytest.mark.parametrize("arg", [None, True, 1.5, ["a"]])
def test_an_argument_redis_cant_take_is_refused_before_anything_is_written(arg):
    with pytest.raises(TypeError):
        sessions.pack_commands([("SET", "k", arg)])
